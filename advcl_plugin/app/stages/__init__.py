"""One module per stage of the ``advcl`` command: pretrain, pseudo-labels, finetune, evaluate, export,
make-folder."""
