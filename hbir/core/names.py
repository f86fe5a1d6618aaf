"""Names shared by evaluation, storage and reports: the settings, the metrics and the pool's corpus language."""

SETTINGS = ("mono", "cross", "multi")  # X -> X, X -> Y (Y != X), X -> the pool of all languages
METRICS = ("map", "mrr@10", "recall@1", "recall@10", "recall@100", "ndcg@10")
POOL = "all"  # corpus_lang of the multi setting
