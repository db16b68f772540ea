"""Self-contained HTML reports made from evaluation results (JSON in, one HTML file out)."""
