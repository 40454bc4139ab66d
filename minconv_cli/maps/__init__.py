"""Maps and animations of forecast stores: truth / forecast / difference panels, ensemble mean,
spread and members, spaghetti contours, GIF/MP4 over the leads (`minconv plot`)."""

from minconv_cli.maps.animate import animate, check_suffix
from minconv_cli.maps.panels import draw_panels, panel_arrays
from minconv_cli.maps.select import Selection, select

__all__ = ["Selection", "animate", "check_suffix", "draw_panels", "panel_arrays", "select"]
