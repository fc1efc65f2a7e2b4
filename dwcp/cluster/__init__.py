"""The cluster control plane: placement, peer choice, breakers, routing (sans-IO).

Every module here is a pure function or a state machine fed with
observations and ``now``; the daemon drives them with real clocks and sockets.
"""
