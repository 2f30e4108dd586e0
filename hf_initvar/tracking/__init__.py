"""Where Q/K/V live in each architecture, their statistics, the callback and the history store."""
