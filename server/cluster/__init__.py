"""Many nodes behind one address: a registry of nodes in Redis, and the routing that sends each new
session to a node with room (WHIP and WHEP by 307, the page's offer by proxy); media then flows
straight between the client and its node."""
