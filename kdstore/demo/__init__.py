"""``kdstore demo``: the whole pipeline on the synthetic corpus, end to end, with a report; and the
recipe that trained the committed demo teacher."""
