"""The MOT case worked out by hand (tests/unit/test_mot.py has the arithmetic), shared with the
val.py --task track test."""

# Two objects over four frames, far apart. The tracker follows A as id 10 then as id 11 (one
# identity switch), follows B as id 20 but misses it in frame 4, and adds one box at frame 2
# where nothing is.
A = [(10, 10, 50, 80), (14, 10, 50, 80), (18, 10, 50, 80), (22, 10, 50, 80)]
B = [(300, 200, 40, 40), (296, 204, 40, 40), (292, 208, 40, 40), (288, 212, 40, 40)]
GT = "".join(f"{f},1,{a[0]},{a[1]},{a[2]},{a[3]},1,0,1.0\n{f},2,{b[0]},{b[1]},{b[2]},{b[3]},1,0,0.8\n"
             for f, (a, b) in enumerate(zip(A, B), 1))
TRACKS = ("1,10,10,10,50,80,0.9,0,-1\n2,10,14,10,50,80,0.9,0,-1\n3,11,18,10,50,80,0.9,0,-1\n"
          "4,11,22,10,50,80,0.9,0,-1\n1,20,300,200,40,40,0.8,0,-1\n2,20,296,204,40,40,0.8,0,-1\n"
          "3,20,292,208,40,40,0.8,0,-1\n2,30,500,20,30,30,0.5,0,-1\n")

