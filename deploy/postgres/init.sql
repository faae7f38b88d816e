-- The pipelines' tables (news_articles, steam_player_counts, …) go to their own
-- database, away from Sluice's metadata in `sluice`.
CREATE DATABASE pipelines OWNER sluice;
