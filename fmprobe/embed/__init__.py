"""The embed stage: a frozen encoder over a dataset once, into the feature store.

``embed()`` (``api``) checks the request and takes the writer's locks; ``run`` creates or
resumes the store and the model's group (``fmprobe.store.write``) and repairs its ledger;
``shard`` embeds the pending chunks of one shard in this process; ``ray`` runs shards as Ray
tasks. Work is done chunk by chunk: a chunk's features are
written first and its ``_done`` ledger entry last, so a killed run loses at most the chunks in
flight and the same command resumes where it stopped.
"""

from fmprobe.embed.api import embed
from fmprobe.embed.run import DTYPES, EmbedReport, EmbedRequest, parse_pools

__all__ = ["DTYPES", "EmbedReport", "EmbedRequest", "embed", "parse_pools"]
