"""Reports: the leaderboard, plots, the static site, the board's tables and the published-table comparisons,
all rendered from records."""
