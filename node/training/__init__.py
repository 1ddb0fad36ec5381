"""Training and evaluation of model packages (`dicom-node train`, `evaluate`, `crossval`): product commands
that are not on the inference path. The node's inference code (node.classify) never imports this package."""
