"""The management HTTP server: JSON API, dashboard, Prometheus metrics.

``runtara.web.service.HttpService`` listens; ``runtara.web.site`` holds the
resource tree; ``runtara.web.api`` the JSON API over ``runtara.admin``;
``runtara.web.dashboard`` the page. The contract is ENVIRONMENT.md
sections 6 and 7; docs/http-api.md documents every endpoint.
"""
