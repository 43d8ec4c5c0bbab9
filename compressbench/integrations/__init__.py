"""Adapters for agent frameworks (each an optional extra, imported only when used):

- :mod:`compressbench.integrations.langchain`: LangChain / LangGraph (``compressbench[langchain]``);
- :mod:`compressbench.integrations.smolagents`: a smolagents tool (``compressbench[smolagents]``).
"""
