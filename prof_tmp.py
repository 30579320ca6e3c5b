import time, numpy as np, torch
from nas.kernels import integer as I
for (hw,cin,cout,k,s,p,G) in [(56,24,144,1,1,0,1),(56,144,144,3,1,1,144),(56,64,64,3,1,1,1)]:
    g=np.random.default_rng(0)
    x=torch.from_numpy(g.integers(0,256,(1,hw,hw,cin)).astype(np.uint8))
    w=torch.from_numpy((2*g.integers(0,256,(cout,cin//G,k,k))-255).astype(np.int16))
    L=I.IntegerConv(w,8,s,p,G,torch.rand(cout)*1e-5,torch.zeros(cout),"relu")
    for rq in [None,(0.,4.,4/255)]:
        L(x,requant=rq,threads=1)
        t=time.perf_counter(); 
        for _ in range(10): L(x,requant=rq,threads=1)
        print(hw,cin,cout,k,G,rq is not None,(time.perf_counter()-t)/10*1e3,"ms")
