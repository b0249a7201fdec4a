"""The engine: plans (pure) and applies (through backends) what the specs and stored state call for."""
