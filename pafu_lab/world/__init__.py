"""Research on the tiny world: ``train`` (the teacher and the causal student), ``evaluate`` (rollouts under
every policy, scored), ``metrics`` (the world's truth at every return), ``oracles`` (upper bounds),
``clips`` (training clips). The runtime half, which the tiny-world nodes need, is ``pafu_core.world``
(``scenes``, ``codec``, the shipped student and head)."""
