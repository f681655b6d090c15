"""MuseChat storage: SQL stores, the Qdrant music catalog and the media store."""
