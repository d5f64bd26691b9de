"""Classification distillation (logit KD, teacher ensembles, CLIP-to-CNN); built in a later issue."""
