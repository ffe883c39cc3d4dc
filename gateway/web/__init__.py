"""The cardholder self-service platform (``onecard web``): see :mod:`gateway.web.app`."""
