"""The serving system: requests, routers, replicas, schedulers, the engine, metrics and the planner."""
