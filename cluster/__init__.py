"""llm-cluster: a self-hosted inference cluster for open-weight LLMs.

Request path (one package per step):
client -> cluster.router -> cluster.router.policies -> cluster.replica -> cluster.engine
"""

__version__ = "0.1.0"
