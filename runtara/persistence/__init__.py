"""Persistence providers of ``runtara.interfaces.IPersistence``."""
