"""Reports: article-style summary blocks, comparisons, plots."""
