"""Tracking by detection: persistent ids for the objects of a video or stream, one tracker per source."""
from engine.infer.track.sources import TRACKERS, SourceTrackers, tracker_config
from engine.infer.track.tracker import TrackCounts, Tracker, TrackerConfig

__all__ = ["TRACKERS", "SourceTrackers", "TrackCounts", "Tracker", "TrackerConfig", "tracker_config"]
