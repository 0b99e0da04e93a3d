"""Market data: sources (Binance klines, CSV files, a synthetic generator), quality checks,
resampling, and the pipeline that checks and stores candles (``pipeline.py``)."""
