"""The operator console (issue 11): ``onecard console``, a sibling of the cardholder platform."""
