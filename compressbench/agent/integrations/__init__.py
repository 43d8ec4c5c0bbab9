"""Adapters for agent frameworks (each an optional extra, imported only when used):

- :mod:`compressbench.agent.integrations.langchain`: LangChain / LangGraph (``compressbench[langchain]``);
- :mod:`compressbench.agent.integrations.smolagents`: a smolagents tool (``compressbench[smolagents]``).
"""
