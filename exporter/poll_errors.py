"""The bounded reasons a poll fails for (`asyncjob_poll_errors_total{reason}`): the HTTP client
sorts every failure into one, the renderer writes each at zero from the start."""

# id_mismatch: an answer to a request about one id that was about another (never applied);
# not_found: a configured source (not a job) that answers 404.
ERROR_REASONS = (
    "timeout",
    "connect",
    "http_4xx",
    "http_429",
    "http_5xx",
    "bad_body",
    "auth",
    "not_found",
    "id_mismatch",
)
