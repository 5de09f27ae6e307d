"""The autoscaler: metrics source -> policy -> actuator, in one loop (`llm-cluster autoscaler`)."""
