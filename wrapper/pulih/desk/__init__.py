"""The request desk: the SOP in a browser (pulih.desk.app), served by pulih serve."""
