"""Holds requests for revisions at zero and wakes them: the autoscaling issue builds it here."""
