"""Cuneiform restoration: masked-character dataset, a bidirectional RoPE character transformer, its
trainer (job kind ``train-restoration``), evaluation against a character n-gram baseline, and the
verified conversion to a TransformerLens ``HookedTransformer``.

Modules (import the one you need; all but `dataset` import torch):

    dataset   BuildDatasetConfig, build_restoration_dataset, load_restoration_dataset, sample_mask
    model     RestorationModelConfig, RestorationModel, rope_tables, save_checkpoint, load_checkpoint
    train     TrainRestorationConfig, run_train_restoration, cli_main
    evaluate  evaluate_model, NgramModel, evaluate_ngram, restore_text
    convert   convert_model, verify_conversion, convert_checkpoint, cli_main
"""
