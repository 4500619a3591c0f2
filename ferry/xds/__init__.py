"""The xDS control plane's serving half; it knows nothing of routing or backends.

`types` (resource types and `Resource`, which carries what it refers to), `resources` (pure builders of
Envoy's messages), `cache` (per-group snapshots, checked for dangling references), `groups` (which snapshot a
gateway gets), `stream` (one ADS stream's protocol state: ACK/NACK, ordering, dependencies), `server` (the gRPC
ADS server, SotW and Delta), `mirror` (a follower replica's copy of the leader's state).
"""
