"""The spec language: loading, validating and typing Model, Policy and Environment documents."""
