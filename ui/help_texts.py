"""Help text of every widget on the Dataset accumulation and Pair tables pages, by widget key (the `?`
beside each widget). Kept here so the pages stay short; tests/pages/test_help_texts.py checks that every
widget those pages render has one."""

from __future__ import annotations

ACCUMULATE = {
    "acc_model": "The model whose attention is decomposed. 'demo' works offline; workspace models are folders "
                 "under models/; gpt2-small needs the Hugging Face cache.",
    "acc_model_name": "Any TransformerLens model name (loaded from the Hugging Face cache; offline it must be "
                      "cached already).",
    "acc_q_saes": "Dictionaries whose features explain the query side: a head-input SAE of the chosen layer, or "
                  "hook_z SAEs of earlier layers (their outputs, summed).",
    "acc_k_saes": "Dictionaries for the key side. Empty: the query side's (the usual choice).",
    "acc_k_extra_saes": "More key-side SAEs by reference (same forms as the query side's).",
    "acc_saved": "A dataset folder saved under the workspace's datasets/ (or 'other…' to type a path).",
    "acc_extra_saes": "More query-side SAEs by reference: ckkissane:<file.pt>, release:<release>/<sae_id> "
                      "(SAELens registry) or a SAELens folder.",
    "acc_layer": "The layer whose attention heads are decomposed (0-based). The SAEs must sit on its input.",
    "acc_heads": "Heads of that layer, e.g. 0, 3, 5. Blank: every head (cost grows with the number of heads).",
    "acc_source": "Where the texts come from. The demo texts need nothing; a local file or saved dataset "
                  "works offline; streaming needs the Hub.",
    "acc_location": "The file, folder or Hub dataset name; a relative path is read from the workspace's "
                    "datasets/ folder.",
    "acc_column": "The column (or JSONL field) holding the text.",
    "acc_split": "The dataset split to read (train, validation, …).",
    "acc_n_samples": "How many texts to process. The estimate below the form scales with it.",
    "acc_context": "Texts are truncated to this many tokens (at most the model's context).",
    "acc_batch": "Texts per forward pass: larger is faster until memory runs out.",
    "acc_shard": "Texts per shard: a shard is written (and appears on the Pair tables page) when complete; "
                 "a resumed job restarts at the last complete shard. All-pair statistics hold a whole shard's "
                 "pairs in memory (GPT-2 Small scale: ≈ 1 GB per text and head); the job stops after its first "
                 "batch, naming a size that fits, when a shard would not fit.",
    "acc_statistics": "exact: every feature pair of every cell is counted (sums and means are exact; marginals "
                      "stored). top-m: only the m largest pairs per cell (older runs; faster on huge SAEs).",
    "acc_layers": "Several layers in one run (all their heads), e.g. 1, 2. Blank: the Layer above.",
    "acc_top_m": "(top-m statistics only) Per (query, key) cell, the m largest |FRA| feature pairs kept: the rest of the score is "
                 "counted in the cell's remainder, not as pairs.",
    "acc_k_active": "0 (default) keeps every active feature: K per side = the largest number of active features "
                    "at any position of the batch, so nothing is truncated. A number n caps K at the n largest "
                    "activations per position and side; what it drops is the 'truncation' node, whose share of "
                    "the score the run records.",
    "acc_threads": "CPU threads of the job process (set before torch loads). 0 = auto: min(CPU cores, 4). On a "
                   "busy machine fewer threads are often faster (1 thread ran a GPT-2 job ≈ 2.3× faster than 2 "
                   "on a loaded 2-core box).",
    "acc_min_pair_count": "Pairs seen fewer times than this within a shard are not stored (1 = store every pair). "
                          "Their count, Σ FRA and Σ |FRA| are recorded per head in the run, so sums stay "
                          "accountable; GPT-2 runs store millions of pairs seen once.",
    "acc_examples": "Example contexts kept per pair (the largest |FRA| occurrences), shown on the Pair tables "
                    "and openable in Single text FRA.",
    "acc_seed": "Seed of the text order (shuffled datasets) and of the sampled activations.",
    "acc_bos": "Prepend the BOS token to every text (as the model was trained).",
    "acc_diag": "Also record query = key contributions (a feature paired with itself on the same token). "
                "The pages can hide them either way.",
    "acc_bos_key": "Leave out keys at the BOS position (attention sinks dominate otherwise).",
    "acc_bos_query": "Leave out queries at the BOS position.",
    "acc_row_centre": "Subtract each query row's mean score first (softmax ignores it): pairs that favour one "
                      "key over the others.",
    "acc_attn_weighted": "Multiply each contribution by the attention probability of its cell: what the head "
                         "actually attended to.",
    "acc_ray_address": "The Ray cluster to run on (ray://host:10001 or host:6379). Blank: $RAY_ADDRESS, else a "
                       "local cluster started for the job.",
    "acc_ray_workers": "Ray worker actors computing shards. 0: one per GPU, else one per CPU.",
    "acc_yaml": "The job's config as YAML: the same run headless with `python -m fra_core accumulate`.",
    "acc_launch": "Checks the model, the SAEs' fit to it and the layer, and the dataset, then starts the job in "
                  "its own process.",
    "acc_job": "A job (or a run whose folder is gone): its progress, log and actions below.",
    "acc_cancel": "Stop the job at its next progress check; its complete shards are kept.",
    "acc_resume": "Restart the job: samples of complete shards are skipped.",
    "acc_delete_sure": "Confirm: the run's rows leave the database (its job folder stays).",
    "acc_delete": "Delete the run from the database.",
}

PAIR_TABLES = {
    "pt_run": "The accumulation run to read (finished runs first; failed ones last).",
    "pt_metric": "How pairs are ranked. The default, mean |FRA| per cell (with a min count), surfaces specific "
                 "pairs; the sums favour dense, always-on features.",
    "pt_order": "Largest first, smallest (most negative) first, or by magnitude.",
    "pt_head": "One head of the run, or all of them.",
    "pt_feature": "Only pairs with this feature id (on the side chosen next).",
    "pt_side": "Where the feature must sit: query, key or either.",
    "pt_min_count": "Leave out pairs seen in fewer cells (default 5: a mean over 1–4 occurrences is mostly noise; "
                    "1 keeps every pair).",
    "pt_self": "A self-pair is the same feature on both sides: keep them, show only them, or leave them out.",
    "pt_diag": "Count query = key occurrences (a feature paired with itself on one token) in n, sum and means.",
    "pt_rows": "Rows shown (at most 10 000).",
    "pt_view": "What to show for the filtered pairs: the table, one feature, a head's q × k heatmap, the grid of "
               "heads, pairs by token, charts, comparisons, exports or SQL.",
    "pt_feature_view": "The feature whose partners and contexts are shown.",
    "pt_src": "The dictionary the feature belongs to (runs with several SAEs).",
    "pt_open_example": "One of the contexts above.",
    "pt_open": "Opens the context in Single text FRA with the run's model, SAEs, layer and head, on its cell.",
    "pt_hist_log": "Log-scale the histogram's counts (long tails become visible).",
    "pt_top_n": "How many top pairs per head the self-pair fraction is computed over.",
    "pt_head_col": "The per-head statistic the bar chart compares.",
    "pt_cmp_mode": "Compare two heads of this run, or this run with another.",
    "pt_cmp_n": "Each side's top N pairs are compared (overlap, Jaccard, correlation).",
    "pt_cmp_a": "The first head.",
    "pt_cmp_b": "The second head.",
    "pt_cmp_run": "The other run (same head filter as above).",
    "pt_export_limit": "Rows in the Parquet / CSV files; 0 exports every matching pair (can be large).",
    "pt_dl_parquet": "Save the built Parquet file of the filtered pairs.",
    "pt_dl_csv": "Save the built CSV file of the filtered pairs.",
    "pt_dl_html": "Save the built HTML report.",
    "pt_dl_package": "Save the built results package.",
    "pt_build_parquet": "Build the filtered pairs as Parquet (with progress); a Download button follows.",
    "pt_build_csv": "Build the filtered pairs as CSV (with progress); a Download button follows.",
    "pt_build_html": "Build a self-contained HTML report of the run; a Download button follows.",
    "pt_build_package": "Build every table of the run (a DuckDB extract, Parquet, report, config) as one .tar.gz, "
                        "with progress per table and per MB compressed; a Download button follows.",
    "pt_sql": "One SELECT over the tables listed above; read-only, at most 10 000 rows.",
    "pt_sql_run": "Run the query.",
    "label": "Your label for the feature: shown in every table of this SAE instead of the automatic one.",
    "label_save": "Save the label for this SAE (every run of it shows it).",
}
