"""gcl_train: data, evaluation, models and training around the GCL loss.

Importing the package is cheap: submodules (`gcl_train.data`, `gcl_train.metrics`,
`gcl_train.evaluation`, `gcl_train.models`, `gcl_train.training`) are imported on use, so the
data layer and the evaluator never pull in torch-heavy model code.
"""
__version__ = "0.1.0"
