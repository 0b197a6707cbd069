"""`python -m bench`: how fast alexnet-serve is, in process and end to end, on the machine it runs on.

One run measures decode + preprocess alone, the model alone, the in-process pipeline (decode pool +
micro-batching, no HTTP), then the real server driven over HTTP by a separate load-generator process,
and reports the ratios issue 5 sets targets for. See docs/performance.md.
"""
