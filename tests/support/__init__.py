"""The real-server harness, the leak check and the proxy topology used by tests in several folders."""
