"""`netdsl show`: pictures of what a trained net learned and does.

filters (a conv layer's kernels), maps (one image's feature maps), neighbours (the training
images nearest a test image in a layer's feature space) and confusion (the test-set
confusion matrix). Each writes a PNG (matplotlib, the optional `plot` extra) and, with
--json, prints the numbers behind it.
"""
