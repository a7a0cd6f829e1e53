"""Kubelet gRPC APIs netdp speaks: Device Plugin v1beta1 and PodResources v1.

`v1beta1/` and `podresources/v1/` hold code generated from `proto/` by
`scripts/gen_proto.py` (committed, checked for staleness by the tests);
`constants` and `names` hold the kubelet's conventions around those APIs.
"""
