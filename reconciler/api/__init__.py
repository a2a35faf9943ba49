"""The HTTP API of ``reconciler run``: FastAPI application, authentication, and its server thread.

Top layer beside ``reconciler.agent`` (which it never imports: it is handed an ``AgentView``).
"""
