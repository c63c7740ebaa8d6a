"""Retrieval: from query and item vectors to ranked items.

    scoring.py          the one owner of the scoring algebra (dot / cosine / neg_l2, their search
                        forms, the neg_l2 score correction, the HNSW space of each scoring)
    exact.py            exact top-K through the C++ scorer (`topk`, `ExactIndex`)
    exact_eager.py      the same contract in eager NumPy (`topk_eager`), the simplest correct answer
    checks.py           argument checks shared by the Python side of the scorer
    hnsw.py             approximate top-K with hnswlib (`HNSWIndex`), its files in hnsw_files.py and
                        its readers-writer lock in rwlock.py
    searcher.py         the `Searcher` protocol both indexes follow
    graph_rank.py       exact rankings of the towers blended with a graph filter (`model.graph_filter`)
    recommend.py        `Recommender`: a saved model directory answering recommendations by external id

Nothing is imported here, so `import twotower.retrieval.scoring` stays light.
"""
