"""The seed study: feature groups ("supernodes") on an attribution graph, proposed automatically
from the graph and checked against it (:mod:`.groups`, :mod:`.autogroup`)."""
