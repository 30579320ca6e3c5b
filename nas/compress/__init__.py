"""Compression after training (seeds 001, 002; survey 000 ch. 2): post-training affine
quantization (`ptq`), pruning (`prune`), weight sharing (`share`), product quantization
(`pq`), and the compressed payload writer (`payload`), priced by `nas.cost.layout`; the
compressed bundle `nas compress` writes and `nas infer` decodes (`bundle`); the plain
networks it works on (`model`: LeNet-5, the ResNet-20-like hand net, folded arch strings).
"""
