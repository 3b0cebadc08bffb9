"""The names of the metrics a site reports and everyone reads: the site agent, the coordinator's services,
its events and pages, and the dashboard's JavaScript (tests/federated/test_metric_keys.py ties that to here).

With an update a site sends `UPDATE_METRICS` (the trained model on its validation split, its training loss
and time) and, under `BASE`, `EVALUATION_METRICS` of the model it trained from with a `SCORE_HISTOGRAM`; in an
evaluation round only the latter. The coordinator pools the sites' evaluations of a model version into
`GLOBAL_METRICS` (an AUC with `VAL_AUC_METHOD`, or none with `VAL_AUC_NOTE`), the figures the charts, the
overview and the event feed show.

Plain constants; imports nothing (the site agent uses it too).
"""

TRAIN_LOSS = "train_loss"
VAL_LOSS = "val_loss"
VAL_ACCURACY = "val_accuracy"
VAL_AUC = "val_auc"
VAL_EXAMPLES = "val_examples"
TRAINING_SECONDS = "training_seconds"
# The update's evaluation of the model it trained from, and the score histogram within an evaluation.
BASE = "base"
SCORE_HISTOGRAM = "score_histogram"
# Written by the coordinator beside an AUC: how the pooled one was computed, or why there is none.
VAL_AUC_METHOD = "val_auc_method"
VAL_AUC_NOTE = "val_auc_note"

# A model's evaluation on one site's validation split.
EVALUATION_METRICS = (VAL_LOSS, VAL_ACCURACY, VAL_AUC, VAL_EXAMPLES)
# What a site reports about the model it trained (its `BASE` evaluation aside).
UPDATE_METRICS = (TRAIN_LOSS, VAL_LOSS, VAL_ACCURACY, VAL_AUC, VAL_EXAMPLES, TRAINING_SECONDS)
# A model version's figures over every site's validation rows, in the order the charts and the overview show them.
GLOBAL_METRICS = (VAL_AUC, VAL_ACCURACY, VAL_LOSS)
