"""Ray custom resources that tie actors to pods: the operator advertises them, the driver requests them.

The operator's RayJob gives each trainer pod ``{TRAINER_RESOURCE: <GPUs per pod>}`` and each rollout pod
``{ROLLOUT_RESOURCE: <GPUs per pod>}`` (colocated pods get both), so a placement-group bundle asking for
``{"GPU": 1, TRAINER_RESOURCE: 1}`` can only land on a trainer pod.
"""

TRAINER_RESOURCE = "kuberl_trainer"
ROLLOUT_RESOURCE = "kuberl_rollout"
