"""The /metrics exposition, one concern a module, in the order a scrape reads them:

scrape.py      Exposition: the body of one scrape, joined from the pieces below
groups.py      per-job series cached as compressed bytes per group, refreshed on change
jobs.py        the per-job families (what each job's series say)
aggregates.py  families rendered at each scrape (counters, histograms, targets)
deflate.py     gzip of the cached pieces
text.py        the text format: escaping, numbers, labels
"""

from exporter.render.scrape import Exposition
from exporter.render.text import CONTENT_TYPE

__all__ = ["CONTENT_TYPE", "Exposition"]
