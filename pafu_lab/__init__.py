"""The research behind the pack, apart from its runtime: distillation (``distill``), teacher targets
(``teacher``), the tiny world's training, evaluation, truth metrics and oracles (``world``), the demo
and its video and charts. It imports ``pafu_core``; ``pafu_core`` and the nodes never import it, and the
registry package leaves it out (``.comfyignore``)."""
