"""The /metrics exposition, one concern a module, in the order a scrape reads them:

scrape.py      Exposition: one body for every client, joined from the pieces below
formats.py     text 0.0.4 or OpenMetrics 1.0.0: which one a scraper asks for, where they differ
groups.py      per-job series as compressed blocks per group, refreshed on change and
               assembled in the background into the job part every scrape serves
attention.py   per_job_series: which jobs need a person (exceptions), and when a quiet one will
jobs.py        the per-job families (what each job's series say)
aggregates.py  families rendered at each scrape (counters, histograms, targets)
deflate.py     raw deflate blocks joined into one gzip member, CRC-32s combined
text.py        the text format: escaping, numbers, labels
"""

from exporter.render.scrape import Exposition
from exporter.render.text import CONTENT_TYPE

__all__ = ["CONTENT_TYPE", "Exposition"]
