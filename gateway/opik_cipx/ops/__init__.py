"""Running the gateway: the daemon, its ``/_cipx`` routes (guard, health, status, sessions,
metrics) and what ``opik-cipx status`` prints. Routes read the gateway through
:class:`~.state.GatewayState`, never by importing the server."""
