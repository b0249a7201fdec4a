"""The webhook service: verifies deliveries from GitHub and Slack and writes them to the inbox."""
