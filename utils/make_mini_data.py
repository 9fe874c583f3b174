"""Write mini_data/: the project's own tiny PT / SFT / DPO data, in the exact schemas of the BAAI data.

Run as:
    python utils/make_mini_data.py                      # writes mini_data/
    python utils/make_mini_data.py --out /tmp/mini      # anywhere else
    python utils/make_mini_data.py --tokenizer models/tokenizer   # count real tokens in the summary

Why this exists: the demo must run the whole PT -> SFT -> DPO pipeline on a CPU in minutes, on files
that look to the loaders exactly like the real downloads (same folders, file-name patterns, column
names, column order and Arrow types), while every word in them is text this project wrote. The
texts are built so that each stage has something to learn that the next stage asks about:

* PT (BAAI IndustryCorpus2 layout, `pt/<industry>/<chinese|english>/high/rank_XXXXX.parquet`)
  teaches facts -- who Li Bai is, what mung bean cake (绿豆糕) is, who "mini_qwen" is -- repeated in
  several documents with different wording, plus short stories and ordinary hotel / travel /
  cooking / programming paragraphs.
* SFT (Infinity-Instruct layout, `sft/7M/train-*.parquet` with int64 ids and `sft/Gen/train-*.parquet`
  with hex string ids and another column order) asks short questions whose answers PT contains,
  including the seed README's four prompts verbatim.
* DPO (Infinity-Preference layout, `dpo/{train,test}-00000-of-00001.parquet`) pairs a clean answer
  that ends properly with a degenerate one (a "复读机" repetition loop, a wrong fact, or an
  off-topic reply).

Everything is generated from fixed seeds (one per section), so re-running gives identical tables.
The quality columns of PT are computed from the text the way Data-Juicer style filters define them
(alnum / special-char ratios, line lengths, 10-gram repetition ratios); perplexity and
quality_score cannot be computed without the original scoring models, so they are drawn from
seeded random numbers in the real data's "high" range.
"""

import argparse
import hashlib
import random
import re
import string
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SEED = 20241127

# ---------------------------------------------------------------------------------------------
# Schemas: equal (names, order, types) to the real BAAI files; see tests/test_mini_data.py.
# List items are named "element" because that is what the real parquet files carry.
# ---------------------------------------------------------------------------------------------
_S = pa.string()
_F = pa.float64()
_I = pa.int64()

PT_ZH_SCHEMA = pa.schema([
    ("text", _S), ("alnum_ratio", _F), ("avg_line_length", _F), ("char_rep_ratio", _F),
    ("flagged_words_ratio", _F), ("max_line_length", _I), ("num_words", _I), ("perplexity", _F),
    ("quality_score", _F), ("special_char_ratio", _F), ("word_rep_ratio", _F), ("_id", _I),
    ("industry_type", _S),
])
PT_EN_SCHEMA = pa.schema([
    ("text", _S), ("alnum_ratio", _F), ("avg_line_length", _F), ("char_rep_ratio", _F),
    ("max_line_length", _I), ("num_words", _I), ("quality_score", _F), ("special_char_ratio", _F),
    ("industry_type", _S),
])
_CONV = pa.list_(pa.field("element", pa.struct([("from", _S), ("value", _S)])))
_STRLIST = pa.list_(pa.field("element", _S))
_LABEL = pa.struct([("ability_en", _STRLIST), ("ability_zh", _STRLIST),
                    ("cate_ability_en", _STRLIST), ("cate_ability_zh", _STRLIST)])
SFT_7M_SCHEMA = pa.schema([("id", _I), ("conversations", _CONV), ("label", _LABEL),
                           ("langdetect", _S), ("source", _S), ("reward", _F)])
SFT_GEN_SCHEMA = pa.schema([("id", _S), ("source", _S), ("langdetect", _S), ("label", _LABEL),
                            ("conversations", _CONV), ("reward", _F)])
_MSGS = pa.list_(pa.field("element", pa.struct([("content", _S), ("role", _S)])))
DPO_SCHEMA = pa.schema([("task_category", _S), ("prompt", _S), ("chosen", _MSGS),
                        ("rejected", _MSGS), ("id", _I)])

# The four prompts of the seed README's evaluation, verbatim.
SEED_PROMPTS = ["李白是谁？", "绿豆糕", "who are you?", "tell me a story"]


def pick(rng, pool, k):
    """k distinct items of pool in random order (all of them when k >= len(pool))."""
    return rng.sample(pool, min(k, len(pool)))


def pick_facts(rng, pool, k):
    """k facts of pool in the pool's own (narrative) order; a tuple entry holds alternative wordings
    of one fact, of which one is chosen, so the same fact reads differently across documents."""
    idx = sorted(rng.sample(range(len(pool)), min(k, len(pool))))
    return [_fact(pool, i, rng) for i in idx]


# =============================================================================================
# PT content, Chinese
# =============================================================================================
LIBAI_ZH = [
    ("李白（701年—762年），字太白，号青莲居士，是唐代著名的浪漫主义诗人。",
     "李白是唐代伟大的浪漫主义诗人，字太白，号青莲居士，生于701年，卒于762年。",
     "唐代诗人李白，字太白，号青莲居士，是中国历史上最有名的浪漫主义诗人之一。"),
    ("李白被后人誉为“诗仙”，他和被称为“诗圣”的杜甫并称“李杜”。",
     "因为诗风飘逸、想象奇特，李白被人们称为“诗仙”；他与“诗圣”杜甫合称“李杜”。",
     "后人尊称李白为“诗仙”，把他和杜甫并称为“李杜”。"),
    ("李白的代表作有《静夜思》《将进酒》《蜀道难》《望庐山瀑布》和《早发白帝城》等。",
     "《静夜思》《将进酒》《蜀道难》都是李白的代表作，《望庐山瀑布》和《早发白帝城》也广为传诵。",
     "说到李白的名篇，人们会想到《静夜思》《将进酒》和《蜀道难》。"),
    "《静夜思》只有二十个字：“床前明月光，疑是地上霜。举头望明月，低头思故乡。”几乎每个中国孩子都会背。",
    "《将进酒》开头写道：“君不见黄河之水天上来，奔流到海不复回。”气势豪迈，读来令人心潮澎湃。",
    "李白少年时生活在蜀地，也就是今天的四川一带，二十多岁时离开家乡，开始漫游天下。",
    "李白一生喜欢饮酒、交友和游历名山大川，许多名篇都是在旅途中写成的。",
    "李白的诗想象丰富，语言奔放自然，充满浪漫主义色彩，代表了唐诗的最高成就之一。",
    "唐玄宗时，李白曾被召到长安，供奉翰林，但他不愿受拘束，不久便离开朝廷，继续四处漫游。",
    "李白现存诗文九百多篇，后人把它们编成了《李太白集》。",
    "李白和杜甫是好朋友，两人曾一起游历，杜甫写过许多怀念李白的诗。",
    "人们常说“李白斗酒诗百篇”，用来形容他才思敏捷、出口成章。",
    "《望庐山瀑布》中的“飞流直下三千尺，疑是银河落九天”，把瀑布写得雄奇壮丽。",
    "《早发白帝城》写道：“朝辞白帝彩云间，千里江陵一日还。”表现了诗人轻快的心情。",
    "《蜀道难》以“噫吁嚱，危乎高哉！蜀道之难，难于上青天”开篇，写尽了蜀道的险峻。",
    "李白是唐代诗人，不是宋代诗人；他生活在唐朝最繁荣的盛唐时期。",
    "月亮是李白最喜欢写的意象之一，“举杯邀明月，对影成三人”也出自他的笔下。",
    "李白晚年生活困顿，762年在当涂去世，但他的诗歌流传千年，至今仍被人们传诵。",
]
LIBAI_ZH_INTRO = [
    "说起唐诗，人们首先想到的往往是李白。",
    "在中国文学史上，李白是一个响亮的名字。",
    "很多人学会的第一首古诗，就是李白的《静夜思》。",
    "今天我们来认识一位伟大的诗人——李白。",
    "如果要选出唐代最有名的诗人，李白一定榜上有名。",
]
LIBAI_ZH_OUTRO = [
    "总之，李白是唐代伟大的浪漫主义诗人，“诗仙”的美名当之无愧。",
    "一千多年过去了，李白的诗依然活在人们的心中。",
    "读李白的诗，能感受到他对自由和自然的热爱。",
    "所以，当有人问“李白是谁”时，我们可以回答：他是唐代诗人，被称为“诗仙”。",
]
LIBAI_ZH_TITLES = ["诗仙李白", "李白是谁", "走近唐代诗人李白", "李白的生平与代表作", "读李白的诗",
                   "唐诗名家：李白", "李白小传"]

DUFU_ZH = [
    "杜甫（712年—770年），字子美，是唐代伟大的现实主义诗人，被后人尊为“诗圣”。",
    "杜甫的诗深刻反映了唐朝由盛转衰的社会现实，因此被称为“诗史”。",
    "杜甫的代表作有《春望》《茅屋为秋风所破歌》和“三吏”“三别”等。",
    "《春望》中的“国破山河在，城春草木深”写出了战乱中诗人的悲痛。",
    "杜甫比李白小十一岁，两人在洛阳相识，结下了深厚的友谊。",
    "与李白的豪放飘逸不同，杜甫的诗风沉郁顿挫，忧国忧民。",
]

GREEN_CAKE_ZH = [
    ("绿豆糕是一种中国传统糕点，主要原料是绿豆、白糖和油，有的地方还会加入桂花或蜂蜜。",
     "绿豆糕是用绿豆、糖和油做成的传统糕点，在中国已经有很长的历史。",
     "作为一种传统点心，绿豆糕的主要材料很简单：绿豆、白糖，再加一点油。"),
    ("绿豆糕颜色淡黄或浅绿，口感细腻，入口即化，味道清甜，带着淡淡的豆香。",
     "好的绿豆糕细腻松软，一入口就化开，甜而不腻，豆香浓郁。"),
    ("绿豆性凉，人们认为绿豆糕有清热解暑的作用，所以夏天吃绿豆糕最合适。",
     "绿豆能清热解暑，因此绿豆糕是夏天最受欢迎的点心之一。"),
    ("在许多地方，端午节有吃绿豆糕的习俗，它和粽子一样是端午的节令点心。",
     "端午节前后，很多人家都会买上几盒绿豆糕，和粽子一起过节。"),
    # the steps stay together: a document never starts in the middle of the recipe
    ("做绿豆糕时，先把去皮绿豆浸泡四五个小时，再上锅蒸熟，然后压成细腻的绿豆泥。"
     "接着把绿豆泥放进锅里，加入糖和油，用小火不停地翻炒，直到豆沙不粘锅、能抱成团。"
     "最后把豆沙分成小份，放进模具里压出花纹，一块块漂亮的绿豆糕就做好了。",
     "绿豆糕的做法是：去皮绿豆泡软后蒸熟，压成绿豆泥，加糖和油用小火炒成不粘锅的豆沙，再用模具压出花纹。"),
    "绿豆糕有京式、苏式和扬式等不同风味：京式绿豆糕不加油，口感干爽；苏式和扬式加油，更加油润绵软。",
    "绿豆糕最好放在冰箱里冷藏保存，吃的时候配一杯清茶，十分消暑。",
    "绿豆糕含糖较多，好吃但不宜一次吃太多。",
    "简单地说，绿豆糕就是用绿豆和糖做成的一种清凉解暑的传统点心。",
]
GREEN_CAKE_ZH_TITLES = ["绿豆糕：夏天的清凉点心", "端午节为什么吃绿豆糕", "在家做绿豆糕", "说说绿豆糕",
                        "传统糕点之绿豆糕"]

RECIPES_ZH = [
    ("番茄炒蛋的家常做法",
     "番茄炒蛋是一道最常见的家常菜，酸甜可口，非常下饭。",
     ["准备两个番茄、三个鸡蛋、一根葱，少许盐和糖。",
      "把番茄切成小块，鸡蛋打散，加一点盐搅匀。",
      "锅中放油，油热后倒入蛋液，炒到刚刚凝固就盛出来。",
      "锅里再放少许油，下番茄块翻炒出汁，加一小勺糖中和酸味。",
      "倒回炒好的鸡蛋，加盐调味，翻炒均匀，撒上葱花即可出锅。"],
     "小窍门：鸡蛋不要炒得太老，番茄最好选熟透的，这样汤汁更浓。"),
    ("夏日绿豆汤",
     "绿豆汤是夏天最受欢迎的解暑饮品，做法简单，成本也很低。",
     ["取一百克绿豆洗净，用清水浸泡两个小时。",
      "锅中加一千五百毫升清水，放入绿豆，大火烧开。",
      "转小火煮四十分钟左右，直到绿豆开花。",
      "根据口味加入冰糖，搅拌至融化。",
      "放凉后放进冰箱冷藏，喝起来更加清爽。"],
     "绿豆汤和绿豆糕都用绿豆做成，都是夏天消暑的好选择。"),
    ("蛋炒饭怎么做才好吃",
     "蛋炒饭看似简单，想要做得粒粒分明却需要一点技巧。",
     ["最好用隔夜的米饭，水分少，炒出来不容易结块。",
      "鸡蛋打散，先下锅炒成小块，盛出备用。",
      "锅中加油，放入米饭，用铲子压散，中火不停翻炒。",
      "米饭炒热后倒入鸡蛋，加盐、葱花，也可以加一些青豆和胡萝卜丁。",
      "翻炒均匀，米粒在锅里跳动时就可以出锅了。"],
     "很多人说，一碗好吃的蛋炒饭最能看出厨师的功夫。"),
    ("端午节包粽子",
     "每年农历五月初五是端午节，人们有吃粽子、赛龙舟、挂艾草的习俗，不少地方还会吃绿豆糕。",
     ["提前一天把糯米泡好，粽叶用开水烫软。",
      "把两片粽叶叠在一起，卷成漏斗形状。",
      "先放一勺糯米，再放红枣或咸肉，最后用糯米盖满。",
      "把粽叶折过来包紧，用棉线扎好。",
      "放进锅里加水没过粽子，大火烧开后转小火煮两个小时。"],
     "甜粽子和咸粽子各有各的拥护者，北方多吃甜粽，南方多吃咸粽。"),
    ("中秋节做月饼",
     "中秋节在农历八月十五，这一天人们赏月、吃月饼，盼望家人团圆。",
     ["把转化糖浆、碱水和油混合均匀，加入面粉揉成饼皮面团，静置一小时。",
      "把莲蓉、豆沙或五仁馅料分成小球。",
      "饼皮包住馅料，放进月饼模具压出花纹。",
      "烤箱预热，先烤五分钟定型，刷上蛋黄液后再烤十五分钟。",
      "刚烤好的月饼比较硬，放两天“回油”后会变得柔软。"],
     "月饼圆圆的，象征团圆，所以中秋节吃月饼有着特别的意义。"),
    ("猪肉白菜饺子",
     "饺子是北方人过年必吃的食物，寓意团圆和吉祥。",
     ["面粉加温水揉成光滑的面团，盖上湿布醒二十分钟。",
      "猪肉剁成肉馅，白菜切碎挤干水分，加入葱姜、盐、酱油和香油拌匀。",
      "面团搓成长条，切成小剂子，擀成中间厚、边缘薄的饺子皮。",
      "在饺子皮中间放上馅料，对折捏紧边缘。",
      "水开后下饺子，煮到饺子浮起来，再点两次凉水就熟了。"],
     "除夕夜全家人围在一起包饺子，是很多人最温暖的记忆。"),
    ("凉拌黄瓜",
     "凉拌黄瓜清脆爽口，是夏天餐桌上最常见的开胃小菜。",
     ["黄瓜洗净，用刀背拍裂，再切成小段。",
      "加一小勺盐拌匀，腌十分钟，倒掉渗出的水。",
      "蒜切成末，和醋、生抽、少许糖、香油调成料汁。",
      "把料汁倒在黄瓜上拌匀，喜欢吃辣的可以淋一点辣椒油。"],
     "拌好后放进冰箱冷藏半小时，吃起来更加爽脆。"),
    ("红烧茄子",
     "红烧茄子软糯入味，用来拌米饭特别香。",
     ["茄子切成滚刀块，撒少许盐腌一会儿，挤掉多余的水分。",
      "锅中多放一点油，把茄子煎到表面微黄变软，盛出备用。",
      "用剩下的油炒香葱姜蒜，加入生抽、老抽、糖和少量清水调成汤汁。",
      "倒入茄子，小火焖两三分钟，让茄子吸饱汤汁。",
      "最后用水淀粉勾薄芡，撒上葱花出锅。"],
     "茄子先腌再煎，可以少吸油，吃起来不会太腻。"),
    ("八宝粥",
     "八宝粥用多种谷物和豆类熬成，营养丰富，冬天喝一碗暖暖和和。",
     ["准备糯米、大米、红豆、绿豆、花生、红枣、莲子和桂圆。",
      "红豆、绿豆和花生提前浸泡一夜。",
      "所有材料洗净后放进锅里，加足量的水，大火烧开。",
      "转小火慢慢熬一个半小时，中间要不时搅拌，防止粘锅。",
      "出锅前加入冰糖，煮到融化即可。"],
     "腊月初八很多人家都会熬一锅腊八粥，做法和八宝粥差不多。"),
]

TEA_ZH = [
    ("喝茶的小常识",
     ["中国是茶的故乡，常见的茶有绿茶、红茶、乌龙茶、白茶和普洱茶等。",
      "绿茶不发酵，味道清新，代表有西湖龙井和碧螺春；红茶全发酵，味道醇厚。",
      "泡绿茶的水温以八十度左右为宜，水太烫会把茶叶烫熟，味道发苦。",
      "夏天喝一杯清茶，再配一块绿豆糕，是很多老人最喜欢的消暑方式。",
      "喝茶虽好，但晚上最好少喝浓茶，以免影响睡眠。"]),
    ("酒店入住小贴士",
     ["入住酒店时需要出示本人有效身份证件，办理入住的时间一般是下午两点以后。",
      "退房时间通常是中午十二点，如果需要晚一点离开，可以提前和前台商量。",
      "进入房间后，先看看安全出口的位置，贵重物品可以放在房间的保险箱里。",
      "很多酒店提供免费的行李寄存服务，退房后还能轻松地在城里逛一逛。",
      "离开房间时记得带好房卡，以免被锁在门外。",
      "如果对房间有任何不满意的地方，可以直接联系前台，工作人员一般都会尽力解决。"]),
    ("民宿和酒店怎么选",
     ["酒店的服务比较标准，适合商务出行和第一次去某个城市的游客。",
      "民宿往往由当地人经营，房间布置更有个性，还能听主人讲讲当地的故事。",
      "带着老人和孩子出行时，选择交通方便、有电梯的住处会更省心。",
      "预订前多看看其他住客的评价，特别要留意关于卫生和隔音的评论。",
      "旅游旺季房间紧张，最好提前一两周预订。"]),
]

CITIES_ZH = [
    ("杭州", "西湖", "西湖边的断桥和苏堤四季风景各不相同，春天桃红柳绿，秋天满城桂花飘香。",
     "西湖醋鱼、龙井虾仁和东坡肉"),
    ("成都", "宽窄巷子", "成都是一座悠闲的城市，可以去看可爱的大熊猫，也可以在茶馆里坐上一下午。",
     "火锅、串串香和担担面"),
    ("西安", "钟楼", "西安是著名的古都，兵马俑、古城墙和大雁塔都值得一看。",
     "肉夹馍、羊肉泡馍和凉皮"),
    ("桂林", "漓江", "人们常说“桂林山水甲天下”，乘竹筏游漓江，能看到两岸奇峰倒映在水中。",
     "桂林米粉和啤酒鱼"),
    ("苏州", "平江路", "苏州的园林闻名天下，拙政园和留园都是典型的江南园林。",
     "松鼠鳜鱼、苏式汤面和各种苏式糕点"),
    ("厦门", "鼓浪屿", "厦门是一座美丽的海滨城市，鼓浪屿上不通汽车，很适合慢慢散步。",
     "沙茶面、海蛎煎和花生汤"),
    ("青岛", "栈桥", "青岛夏天凉爽，红瓦绿树、碧海蓝天是这座城市的名片。",
     "各种海鲜和青岛啤酒"),
    ("昆明", "翠湖", "昆明四季如春，被称为“春城”，冬天还能在翠湖边喂红嘴鸥。",
     "过桥米线和鲜花饼"),
]
# city -> (best season, more things to see and do)
CITY_GUIDE_ZH = {
    "杭州": ("春天和秋天", ["可以坐船游西湖，看看湖心的三潭印月。", "灵隐寺是一座千年古刹，周围古木参天。",
                         "龙井村在西湖西边的山里，可以在茶农家里喝一杯新茶。"]),
    "成都": ("春天和秋天", ["宽窄巷子和锦里都是逛吃的好去处。", "都江堰是两千多年前修建的水利工程，至今仍在使用。",
                         "晚上去看一场川剧变脸，非常精彩。"]),
    "西安": ("春天和秋天", ["在古城墙上骑自行车绕一圈，大约需要两三个小时。", "回民街上小吃很多，晚上特别热闹。",
                         "大雁塔北广场每天晚上都有音乐喷泉表演。"]),
    "桂林": ("四月到十月", ["阳朔的西街很热闹，可以在那里住一晚。", "龙脊梯田层层叠叠，秋天一片金黄。",
                         "象鼻山是桂林的标志，形状像一头在江边喝水的大象。"]),
    "苏州": ("春天和秋天", ["周庄和同里是苏州附近有名的水乡古镇。", "坐着小船游平江河，能看到白墙黛瓦的老房子。",
                         "寒山寺因唐诗《枫桥夜泊》而闻名。"]),
    "厦门": ("秋天和冬天", ["环岛路适合骑车，一边是大海，一边是绿树。", "南普陀寺旁边就是厦门大学，校园风景很美。",
                         "曾厝垵有很多小店和小吃摊。"]),
    "青岛": ("夏天", ["八大关有许多风格各异的老别墅，是拍照的好地方。", "崂山靠着大海，山海相连，风景壮观。",
                   "在海边的金沙滩可以玩水、堆沙子。"]),
    "昆明": ("一年四季", ["滇池边的海埂大坝是冬天看红嘴鸥的好地方。", "石林的奇石千姿百态，被称为“天下第一奇观”。",
                       "斗南花市是亚洲最大的鲜花交易市场之一，鲜花便宜又漂亮。"]),
}
HOTEL_SUFFIX_ZH = ["悦居酒店", "云栖客栈", "青禾精品酒店", "半山民宿", "望月宾馆", "晴川酒店"]
HOTEL_ROOM_ZH = [
    "房间面积不大，但布置得干净整洁，床品柔软舒适。",
    "我们订的是家庭房，有一张大床和一张小床，带孩子出行很方便。",
    "卫生间干湿分离，热水充足，洗漱用品一应俱全。",
    "房间的隔音效果不错，晚上睡得很安稳。",
    "窗外就是一片绿树，早上能听到鸟叫声。",
    "房间里有烧水壶和两瓶免费矿泉水，还贴心地准备了茶包。",
    "前台的工作人员态度热情，入住手续几分钟就办好了。",
    "酒店还提供洗衣房和行李寄存服务。",
    "房间朝南，阳光很好，白天几乎不用开灯。",
    "床头有充电插座和阅读灯，晚上躺着看书很方便。",
    "浴室里有浴缸，泡个热水澡，一天的疲劳都消失了。",
    "酒店楼顶有一个小花园，傍晚可以上去看日落。",
    "唯一的缺点是电梯有点慢，早上退房的高峰期要等一会儿。",
]
HOTEL_TIP_ZH = [
    "建议提前在网上预订，节假日房间很紧张。",
    "如果带着老人出行，可以请前台安排低楼层的房间。",
    "酒店附近有地铁站，去机场和火车站都很方便。",
    "晚上可以去附近的夜市逛逛，吃点当地小吃。",
    "总体来说，这家酒店性价比很高，下次来还会选择这里。",
    "停车位比较少，自驾的朋友最好提前打电话确认。",
    "前台可以帮忙预订景点门票和出租车，非常省心。",
    "早餐时间是七点到十点，去晚了菜品会少一些。",
]


def zh_hotel_doc(rng, city):
    name, landmark, sight, foods = city
    hotel = name + rng.choice(HOTEL_SUFFIX_ZH)
    title = rng.choice([f"{name}住宿推荐：{hotel}入住体验", f"{hotel}怎么样？一位住客的真实感受",
                        f"在{name}住了三晚：{hotel}"])
    price = rng.choice([268, 328, 399, 458, 520, 680])
    minutes = rng.choice([5, 8, 10, 15])
    lines = [title,
             f"{hotel}位于{name}{landmark}附近，步行大约{minutes}分钟就能到，交通十分方便。"
             f"旺季每晚价格在{price}元左右。",
             "".join(pick(rng, HOTEL_ROOM_ZH, 3)),
             f"酒店的早餐是自助式的，除了包子、豆浆、鸡蛋和粥，还有{name}本地的特色小吃。"
             f"附近有很多餐馆，可以品尝{foods}。",
             sight,
             "".join(pick(rng, HOTEL_TIP_ZH, 2))]
    return "\n".join(lines)


def zh_guide_doc(rng, city):
    name, landmark, sight, foods = city
    season, more = CITY_GUIDE_ZH[name]
    lines = [rng.choice([f"{name}旅行攻略", f"第一次去{name}怎么玩", f"{name}三日游"]),
             f"{name}最适合旅行的季节是{season}。" + sight,
             "".join(pick(rng, more, 3)),
             f"来到{name}，一定要尝尝{foods}。",
             rng.choice([f"住宿建议选在{landmark}附近，出行方便，晚上散步也很安全。",
                         f"如果预算有限，可以选择{landmark}附近的民宿，价格实惠，还能感受当地人的生活。"]),
             rng.choice(["出门记得带上充电宝和雨伞。", "旅游旺季人很多，热门景点最好提前在网上预约。",
                         "穿一双舒服的鞋子，因为这座城市最好的风景都需要慢慢走着看。"])]
    return "\n".join(lines)


def zh_recipe_doc(rng, recipe):
    title, intro, steps, tip = recipe
    lines = [title, intro, "做法如下："]
    lines += [f"{i}. {s}" for i, s in enumerate(steps, 1)]
    lines.append(tip)
    return "\n".join(lines)


def zh_fact_doc(rng, titles, intros, pool, outros, k):
    lines = [rng.choice(titles)]
    if intros:
        lines.append(rng.choice(intros))
    facts = pick_facts(rng, pool, k)
    # two or three facts per paragraph, like an ordinary article
    i = 0
    while i < len(facts):
        n = rng.choice([2, 3])
        lines.append("".join(facts[i:i + n]))
        i += n
    if outros:
        lines.append(rng.choice(outros))
    return "\n".join(lines)


def _fact(pool, i, rng):
    """Fact i of a pool, one of its wordings when it has several."""
    return rng.choice(pool[i]) if isinstance(pool[i], tuple) else pool[i]


def zh_green_cake_docs(rng):
    docs = [zh_fact_doc(rng, GREEN_CAKE_ZH_TITLES, [], GREEN_CAKE_ZH, [], k) for k in (6, 7, 8, 6, 9, 7, 5, 8)]
    docs.append("\n".join([
        "关于绿豆糕的几个问题",
        "问：绿豆糕是什么？",
        "答：" + _fact(GREEN_CAKE_ZH, 0, rng) + _fact(GREEN_CAKE_ZH, 1, rng),
        "问：什么时候吃绿豆糕？",
        "答：" + _fact(GREEN_CAKE_ZH, 2, rng) + _fact(GREEN_CAKE_ZH, 3, rng),
        "问：绿豆糕怎么做？",
        "答：" + GREEN_CAKE_ZH[4][0],
    ]))
    return docs


def zh_libai_docs(rng):
    docs = [zh_fact_doc(rng, LIBAI_ZH_TITLES, LIBAI_ZH_INTRO, LIBAI_ZH, LIBAI_ZH_OUTRO, k)
            for k in (7, 8, 6, 9, 7, 8, 10, 6, 8, 7, 9, 6)]
    docs.append("\n".join([
        "唐诗常识问答",
        "问：李白是谁？",
        "答：李白是唐代著名的浪漫主义诗人，字太白，号青莲居士，被后人称为“诗仙”。",
        "问：李白有哪些代表作？",
        "答：" + _fact(LIBAI_ZH, 2, rng),
        "问：“诗圣”是谁？",
        "答：" + DUFU_ZH[0],
        "问：《静夜思》是谁写的？",
        "答：《静夜思》是李白写的，全诗是：床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    ]))
    docs.append("\n".join(["李白与杜甫"] + ["".join(DUFU_ZH[:3]), "".join(DUFU_ZH[3:]),
                                          _fact(LIBAI_ZH, 1, rng) + _fact(LIBAI_ZH, 10, rng)]))
    return docs


PROSE_ZH = [
    ("月是故乡明",
     ["每到中秋，天上的月亮又大又圆，总让人想起远方的家。",
      "小时候，奶奶会在院子里摆上月饼和水果，一家人坐在一起赏月，听她讲嫦娥奔月的故事。",
      "后来我去外地读书、工作，回家的次数越来越少。",
      "有一年中秋，我一个人站在宿舍的窗前，忽然想起李白的“举头望明月，低头思故乡”，眼眶一下子就湿了。",
      "原来一千多年前的诗人，和今天的我们有着一样的思念。"]),
    ("写给朋友的一封信",
     ["老朋友，好久不见，你最近还好吗？",
      "前几天整理书架，翻出了我们高中时一起写的日记，上面还有你画的小猫。",
      "那时候我们约好，将来要一起去桂林看山水，一起去西安看兵马俑。",
      "这些年各自忙碌，约定一直没有实现，但我一直记在心里。",
      "等到明年春天，我们就出发吧。祝你一切顺利，天天开心。"]),
    ("雨天的小面馆",
     ["下雨的傍晚，我走进街角一家小面馆。",
      "老板是一位头发花白的老人，他一边煮面一边和我聊天，说这家店已经开了三十年。",
      "一碗热腾腾的汤面端上来，葱花浮在汤面上，香气扑鼻。",
      "窗外雨声沙沙，屋里灯光温暖，那一刻觉得生活其实很简单。",
      "吃完面出门，雨已经停了，路边的积水里映着一盏盏路灯。"]),
    ("外婆的绿豆糕",
     ["小时候每到夏天，外婆都会给我做绿豆糕。",
      "她前一天晚上就把绿豆泡上，第二天一早上锅蒸熟，再一点一点压成细细的豆泥。",
      "炒豆沙的时候，厨房里满是甜甜的豆香，我总是守在灶台边，等着第一块出锅。",
      "外婆用一个旧木头模子把豆沙压出梅花的形状，放进井水里镇一镇，咬一口又凉又甜。",
      "她说，绿豆清热解暑，端午节吃绿豆糕，整个夏天都不怕热。",
      "如今外婆老了，做不动了，可我每次在街上看到绿豆糕，都会想起那个夏天的厨房。"]),
    ("读《将进酒》有感",
     ["第一次读李白的《将进酒》，就被开头一句“君不见黄河之水天上来”震撼了。",
      "诗人把黄河写得像从天上倾泻下来一样，气势磅礴，一下子把读者带进了他的世界。",
      "接下来的“天生我材必有用，千金散尽还复来”，更是写出了李白的自信与豪迈。",
      "这首诗写于李白离开长安之后，那时他仕途失意，却依然乐观洒脱。",
      "我想，这正是李白被称为“诗仙”的原因：他的诗里有一种超越现实的自由。"]),
    ("春天的公园",
     ["周末的早晨，我去家附近的公园散步。",
      "湖边的柳树抽出了嫩芽，远远看去像一层淡绿色的烟。",
      "几位老人在亭子里下象棋，旁边围着一圈看热闹的人。",
      "孩子们在草地上放风筝，风筝越飞越高，笑声也越来越响。",
      "我在长椅上坐了一会儿，什么也没想，只是晒着太阳，觉得心里很安静。"]),
    ("第一次给妈妈做饭",
     ["十二岁那年母亲节，我决定给妈妈做一顿饭。",
      "我照着菜谱做了番茄炒蛋，鸡蛋炒老了，番茄也放多了盐。",
      "可是妈妈吃得很开心，一边吃一边说：“这是我吃过最好吃的番茄炒蛋。”",
      "后来我学会了很多菜，但那盘咸咸的番茄炒蛋，一直是我最难忘的一道菜。"]),
]

POEMS_ZH = [
    ("春晓", "孟浩然", "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。",
     "诗人春天早晨醒来，听到到处是鸟叫声，想起夜里的风雨，不知道打落了多少花。全诗清新自然，充满对春天的喜爱。"),
    ("登鹳雀楼", "王之涣", "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。",
     "后两句常被用来比喻：想要看得更远，就要站得更高，不断进取。"),
    ("悯农", "李绅", "锄禾日当午，汗滴禾下土。谁知盘中餐，粒粒皆辛苦。",
     "这首诗写出了农民耕种的辛苦，提醒人们要珍惜粮食。"),
    ("静夜思", "李白", "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
     "诗人在异乡的夜晚看到明亮的月光，勾起了对故乡的思念。这是李白流传最广的一首诗。"),
    ("早发白帝城", "李白", "朝辞白帝彩云间，千里江陵一日还。两岸猿声啼不住，轻舟已过万重山。",
     "李白在流放途中遇到赦免，心情轻快，写下了这首诗，船行之快跃然纸上。"),
    ("相思", "王维", "红豆生南国，春来发几枝。愿君多采撷，此物最相思。",
     "红豆又叫相思豆，诗人借红豆表达对朋友的思念。"),
    ("春望", "杜甫", "国破山河在，城春草木深。感时花溅泪，恨别鸟惊心。",
     "这是诗圣杜甫在战乱中写的诗，表达了忧国思家的深切感情。"),
]
FESTIVALS_ZH = [
    ("春节", "春节是农历正月初一，是中国最隆重的传统节日。除夕夜全家人吃年夜饭、守岁，北方人还要包饺子；"
     "大年初一人们穿新衣、拜年、放鞭炮，孩子们会收到压岁钱。"),
    ("元宵节", "元宵节在农历正月十五，是新年后的第一个月圆之夜。人们吃元宵或汤圆、赏花灯、猜灯谜，热热闹闹地结束春节。"),
    ("清明节", "清明节在公历四月五日前后，既是节气也是节日。人们扫墓祭祖，缅怀先人，也会趁着春光外出踏青、放风筝。"),
    ("端午节", "端午节在农历五月初五，相传是为了纪念诗人屈原。人们吃粽子、赛龙舟、挂艾草，许多地方还会吃绿豆糕、"
     "咸鸭蛋，因为端午前后天气渐热，绿豆糕正好清热解暑。"),
    ("七夕节", "七夕节在农历七月初七，来源于牛郎织女的传说。传说每年这一天，喜鹊会搭成一座鹊桥，让牛郎和织女相会。"),
    ("中秋节", "中秋节在农历八月十五，这天的月亮又圆又亮。人们赏月、吃月饼，盼望家人团圆。李白“举头望明月，低头思故乡”"
     "的诗句，也常在中秋时被人们想起。"),
    ("重阳节", "重阳节在农历九月初九，人们登高、赏菊、喝菊花茶，也是敬老爱老的节日。"),
]
COMPUTER_ZH = [
    ("计算机由哪些部分组成",
     ["一台计算机主要由中央处理器（CPU）、内存、硬盘、输入设备和输出设备组成。",
      "CPU负责执行指令，是计算机的“大脑”；内存速度快但断电后数据会丢失，用来存放正在运行的程序。",
      "硬盘容量大，断电后数据也不会丢失，用来长期保存文件。",
      "显卡（GPU）原本用来处理图像，现在也被大量用于训练人工智能模型。",
      "键盘和鼠标是常见的输入设备，显示器和打印机是常见的输出设备。"]),
    ("常用的Linux命令",
     ["Linux是服务器上最常用的操作系统，熟悉几个基本命令会让工作轻松很多。",
      "ls 列出当前目录的文件，cd 进入某个目录，pwd 显示当前所在的路径。",
      "mkdir 新建目录，cp 复制文件，mv 移动或重命名文件，rm 删除文件，使用 rm 时要格外小心。",
      "cat 查看文件内容，head 和 tail 查看文件的开头和结尾，tail -f 可以实时查看日志。",
      "nohup 加上 & 可以让程序在后台运行，关掉终端也不会停止。"]),
    ("Git入门",
     ["Git是一个版本控制工具，可以记录代码的每一次修改。",
      "git init 创建一个新仓库，git clone 下载一个已有的仓库。",
      "修改代码后，用 git add 把改动加入暂存区，再用 git commit -m \"说明\" 提交。",
      "git log 查看提交历史，git diff 查看尚未提交的改动。",
      "多人合作时，每个人在自己的分支上开发，完成后再合并到主分支。"]),
    ("网页是怎样打开的",
     ["在浏览器里输入网址后，浏览器先通过DNS把域名翻译成服务器的IP地址。",
      "然后浏览器按照HTTP协议向服务器发送请求，服务器返回网页的HTML代码。",
      "浏览器解析HTML，再下载其中用到的图片、样式表和脚本，最后把页面显示出来。",
      "网址以https开头时，传输的数据是加密的，更加安全。"]),
]
STORY_CHARS_ZH = [("一只小狐狸", "小狐狸"), ("一位老渔夫", "老渔夫"), ("一个叫小花的女孩", "小花"),
                  ("一只小兔子", "小兔子"), ("一位年轻的面包师", "面包师"), ("一只勤劳的小蚂蚁", "小蚂蚁"),
                  ("一个叫阿明的男孩", "阿明"), ("一只会唱歌的小鸟", "小鸟")]
STORY_PLACES_ZH = ["在一座大山脚下", "在一条小河边", "在一片茂密的森林里", "在一个安静的小村庄里",
                   "在海边的一个小镇上"]
STORY_TRAITS_ZH = ["{n}心地善良，总是乐于帮助别人。", "{n}性格活泼，每天都过得开开心心。",
                   "{n}非常勤劳，天一亮就起床干活。", "{n}有点胆小，但对什么都很好奇。"]
STORY_PLOTS_ZH = [
    ("这年冬天特别冷，{n}发现家里的粮食快吃完了。",
     "{n}想起邻居们曾经帮助过自己，便鼓起勇气去敲门求助。",
     "大家你一袋豆子、我一把米，很快就帮{n}渡过了难关。",
     "这个故事告诉我们，邻里之间要互相帮助。"),
    ("一天，{n}在路上捡到了一个装满金币的钱袋。",
     "{n}没有把钱袋据为己有，而是在原地等了整整一个下午。",
     "失主终于找来了，他感激地说：“你真是一个诚实的好人。”",
     "这个故事告诉我们，诚实是最宝贵的品质。"),
    ("一场大雨过后，通往集市的小木桥被冲断了。",
     "{n}找来木头和绳子，和朋友们一起忙了整整三天。",
     "一座新桥搭好了，大家又能高高兴兴地去赶集了。",
     "这个故事告诉我们，团结起来就没有办不成的事。"),
    ("{n}很想学会游泳，可是每次一下水就害怕。",
     "{n}每天都去浅水里练习一点点，从来没有放弃。",
     "夏天快结束的时候，{n}已经能在河里自由自在地游来游去了。",
     "这个故事告诉我们，只要坚持，就能克服困难。"),
    ("有一天，{n}在森林里迷了路，天色越来越暗。",
     "{n}想起奶奶说过，北极星总是在北方，于是抬头寻找那颗明亮的星星。",
     "顺着星星指引的方向，{n}终于找到了回家的路。",
     "这个故事告诉我们，遇到困难时要冷静思考。"),
    ("{n}种下了一颗种子，每天都盼着它马上长大。",
     "可是好几天过去了，种子还没有发芽，{n}急得想把它挖出来看看。",
     "妈妈说：“要耐心等待。”两个星期后，嫩绿的小芽终于钻出了泥土。",
     "这个故事告诉我们，做事要有耐心。"),
    ("{n}特别喜欢唱歌，可是有人笑话{n}唱得不好听。",
     "{n}没有灰心，每天清晨都对着小河练习。",
     "到了秋天的音乐会上，{n}的歌声赢得了所有人的掌声。",
     "这个故事告诉我们，不要因为别人的嘲笑而放弃梦想。"),
    ("一天，{n}在路边发现了一只受伤的小麻雀。",
     "{n}小心地给它包扎好伤口，每天喂它小米和清水。",
     "一个月后，小麻雀的伤好了，在{n}头顶盘旋了三圈，才飞向蓝天。",
     "这个故事告诉我们，善良的人会收获温暖。"),
    ("{n}想在院子里种一棵苹果树，邻居笑着说：“等它结果，要好多年呢。”",
     "{n}还是每天浇水、施肥，细心照料小树苗。",
     "几年以后，苹果树结满了又红又大的苹果，{n}把苹果分给了村里的每一户人家。",
     "这个故事告诉我们，今天的努力会变成明天的收获。"),
    ("{n}和最好的朋友吵了一架，好几天都没有说话。",
     "{n}心里很难过，终于鼓起勇气，带着自己最喜欢的点心去找朋友道歉。",
     "朋友笑着说：“其实我也想跟你和好。”两个好朋友又像从前一样形影不离了。",
     "这个故事告诉我们，真正的朋友懂得互相原谅。"),
    ("这一年夏天特别热，村子里的井快要干了。",
     "{n}带着大家沿着山路寻找水源，走了整整一天。",
     "终于，他们在山谷里找到了一眼清泉，又修了一条小水渠，把泉水引回了村子。",
     "这个故事告诉我们，办法总比困难多。"),
]
STORY_ENDS_ZH = ["从那以后，{n}过上了快乐的日子。", "这件事很快传开了，大家都更喜欢{n}了。",
                 "每当想起这件事，{n}都会开心地笑起来。"]


def zh_poem_doc(rng, poems):
    lines = [rng.choice(["唐诗选读", "古诗赏析", "小学生必背古诗"])]
    for title, poet, text, note in poems:
        lines += [f"《{title}》 唐·{poet}", text, note]
    return "\n".join(lines)


def zh_festival_doc(rng, items):
    return "\n".join([rng.choice(["中国的传统节日", "传统节日知识", "一年中的节日"])]
                     + [f"{name}：{text}" for name, text in items])


def zh_story(rng, char=None, plot=None):
    full, n = char or rng.choice(STORY_CHARS_ZH)
    problem, attempt, result, moral = plot or rng.choice(STORY_PLOTS_ZH)
    parts = [f"从前，{rng.choice(STORY_PLACES_ZH)}，住着{full}。", rng.choice(STORY_TRAITS_ZH),
             problem, attempt, result, rng.choice(STORY_ENDS_ZH), moral]
    return "".join(p.format(n=n) for p in parts)


def zh_story_doc(rng):
    title = rng.choice(["睡前小故事", "童话故事两则", "给孩子讲的故事", "小故事大道理"])
    k = rng.choice([2, 3])
    stories = [zh_story(rng, c, p) for c, p in zip(pick(rng, STORY_CHARS_ZH, k), pick(rng, STORY_PLOTS_ZH, k))]
    return "\n".join([title] + stories)


MINIQWEN_ZH = [
    ("我是mini_qwen，一个从零开始训练的小型语言模型。",
     "mini_qwen是一个从零开始训练的小型语言模型。",
     "mini_qwen这个名字的意思是“迷你的Qwen”：它是一个从零开始训练的小型语言模型。"),
    "mini_qwen采用与Qwen2.5相同的模型结构，只是层数更少、参数量更小，普通电脑的CPU上也能跑通演示。",
    "mini_qwen的训练分为三个阶段：预训练（PT）、监督微调（SFT）和直接偏好优化（DPO）。",
    "在预训练阶段，mini_qwen阅读大量中英文文本，学习根据前面的内容预测下一个词。",
    "在监督微调阶段，mini_qwen学习按照对话的格式回答用户的问题。",
    "在直接偏好优化阶段，mini_qwen学习更喜欢清晰、正确、结尾完整的回答，而不是重复啰嗦的回答。",
    "mini_qwen能回答一些简单的问题，也会讲简短的小故事，但它的知识有限，回答可能会出错。",
    "mini_qwen是一个学习项目，用来展示大语言模型从零开始训练的完整流程。",
    "mini_qwen使用Qwen的分词器，词表大约有十五万个词元，同时支持中文和英文。",
    "如果有人问mini_qwen“你是谁”，它会回答：“我是mini_qwen，一个从零开始训练的小型语言模型。”",
]
LM_ZH = [
    ("什么是语言模型",
     ["语言模型是一种根据上文预测下一个词的概率模型。",
      "现在的大语言模型大多基于Transformer结构，核心是自注意力机制，它让每个词都能“看到”前面的所有词。",
      "模型先用分词器把文字切成词元（token），每个词元对应一个编号，再把编号转换成向量送进网络。",
      "训练时，模型不断比较自己的预测和真实的下一个词，用交叉熵损失来衡量差距，并通过梯度下降更新参数。",
      "参数越多、数据越多，模型通常越聪明，但训练所需的算力也越大。"]),
    ("预训练、微调和偏好优化",
     ["训练一个对话模型通常分三步。",
      "第一步是预训练：在海量文本上学习语言规律和世界知识，这一步花费的算力最多。",
      "第二步是监督微调：用人工整理的问答数据教模型按照“用户—助手”的格式回答问题。",
      "第三步是偏好优化，例如DPO：给模型看同一个问题的两个回答，一个好、一个差，让它学会更倾向于好的回答。",
      "DPO不需要单独训练奖励模型，实现起来比强化学习简单得多。"]),
    ("复读机现象是怎么回事",
     ["小模型在生成文字时，常常会把同一句话重复很多遍，大家形象地称之为“复读机”现象。",
      "原因之一是模型还没有学会在合适的位置结束回答，也就是没有学会输出结束符。",
      "增加训练数据、进行监督微调，以及用DPO惩罚重复的回答，都能减轻这种现象。",
      "生成时调整重复惩罚（repetition penalty）或使用采样，也是常用的办法。"]),
    ("显卡与训练速度",
     ["训练神经网络需要进行大量矩阵乘法，GPU擅长并行计算，因此比CPU快得多。",
      "显存决定了一次能放下多大的模型和多长的序列；显存不够时，可以减小批大小，或者使用梯度累积。",
      "混合精度训练用bf16或fp16代替fp32，可以节省显存、提高速度。",
      "在CPU上也能训练很小的模型，只是速度慢很多，适合用来检查代码是否正确。"]),
    ("分词器是做什么的",
     ["计算机不能直接理解文字，需要先把文字变成数字，这个工作由分词器完成。",
      "分词器把一段文本切成一个个词元，常用的方法是字节对编码（BPE）：从单个字节出发，反复合并最常一起出现的片段。",
      "在Qwen的分词器里，一个常用汉字往往就是一个词元，英文单词则常常是一个或几个词元。",
      "分词器还定义了一些特殊词元，例如<|im_start|>和<|im_end|>，用来标记对话中每一轮的开始和结束。",
      "词表越大，同样的文本切出来的词元越少，但模型最后一层的计算量也越大。"]),
    ("学习率和损失曲线",
     ["学习率决定每一步参数更新的幅度，是训练中最重要的超参数之一。",
      "学习率太大，损失会剧烈震荡甚至变成NaN；学习率太小，损失下降得非常慢。",
      "常见的做法是先用较小的学习率“预热”一段时间，再慢慢增大，最后按余弦曲线逐渐减小。",
      "观察损失曲线可以判断训练是否正常：健康的曲线开始下降很快，之后越来越平缓。",
      "如果训练集损失一直下降，验证集损失却开始上升，说明模型可能过拟合了。"]),
    ("什么是序列打包",
     ["预训练时，文档的长短差别很大，如果每条文档单独补齐到固定长度，会浪费大量计算。",
      "序列打包把多篇文档首尾相接，再切成固定长度的块，例如每块128个或1024个词元。",
      "为了不让一篇文档“看到”另一篇文档，可以让每篇文档的位置编号从0重新开始，并使用按文档划分的注意力掩码。",
      "文档之间通常插入一个结束符，让模型学会在哪里结束一段文字。"]),
]
PYTHON_ZH = [
    ("Python入门：变量和列表",
     ["Python是一门简单易学的编程语言，广泛用于数据分析、网站开发和人工智能。",
      "在Python中，变量不需要提前声明类型，直接赋值就可以使用，例如 name = \"mini_qwen\"。",
      "列表用方括号表示，可以存放多个元素：fruits = [\"苹果\", \"香蕉\", \"西瓜\"]。",
      "用 fruits.append(\"葡萄\") 可以在列表末尾添加元素，用 len(fruits) 可以得到列表的长度。",
      "列表的下标从0开始，fruits[0] 就是第一个元素“苹果”。"]),
    ("Python入门：函数和循环",
     ["函数用 def 关键字定义，可以把一段常用的代码包装起来，反复调用。",
      "例如：\ndef add(a, b):\n    return a + b\n调用 add(2, 3) 会得到 5。",
      "for 循环可以依次处理列表中的每个元素：\nfor fruit in fruits:\n    print(fruit)",
      "while 循环会在条件成立时一直执行，要注意设置结束条件，避免死循环。",
      "写函数时最好加上简短的说明，方便别人和将来的自己阅读。"]),
    ("Python入门：字典和文件",
     ["字典用花括号表示，保存“键—值”对，例如 ages = {\"小明\": 12, \"小红\": 11}。",
      "通过键可以很快查到对应的值：ages[\"小明\"] 的结果是 12。",
      "读取文本文件可以用 with open(\"data.txt\", encoding=\"utf-8\") as f: text = f.read()。",
      "with 语句会在用完文件后自动关闭它，即使中间出了错也一样。",
      "处理中文文件时一定要指定 encoding=\"utf-8\"，否则可能出现乱码。"]),
    ("排序算法简介",
     ["排序是最基础的算法之一，目的是把一组数据按从小到大或从大到小的顺序排列。",
      "冒泡排序每次比较相邻的两个元素，如果顺序不对就交换，时间复杂度是O(n²)。",
      "快速排序选一个基准值，把数据分成比它小和比它大的两部分，再分别排序，平均时间复杂度是O(n log n)。",
      "在Python中，直接使用内置的 sorted() 函数或列表的 sort() 方法就可以完成排序。",
      "例如 sorted([3, 1, 2]) 的结果是 [1, 2, 3]。"]),
    ("Python入门：异常处理",
     ["程序运行时难免出错，比如除以零、打开不存在的文件，Python会抛出异常。",
      "用 try 和 except 可以捕获异常，让程序不至于直接崩溃：\ntry:\n    x = 1 / 0\nexcept ZeroDivisionError:\n    print(\"不能除以零\")",
      "except 后面最好写明具体的异常类型，不要什么错误都一把抓住，否则真正的问题会被掩盖。",
      "好的错误信息应该告诉用户哪里出了问题、该怎么修改。"]),
    ("Python入门：类和对象",
     ["类是创建对象的模板，用 class 关键字定义。",
      "例如：\nclass Cat:\n    def __init__(self, name):\n        self.name = name\n"
      "    def speak(self):\n        return self.name + \"：喵～\"",
      "Cat(\"小白\").speak() 会返回“小白：喵～”。",
      "__init__ 是构造方法，创建对象时自动调用；self 代表对象本身。",
      "把相关的数据和函数放在同一个类里，可以让代码更有条理。"]),
]


def zh_mini_qwen_docs(rng):
    titles = ["mini_qwen简介", "认识mini_qwen", "我是mini_qwen", "mini_qwen是怎样训练出来的"]
    docs = [zh_fact_doc(rng, titles, [], MINIQWEN_ZH, [], k) for k in (6, 7, 8, 5, 7, 6, 8, 5)]
    docs.append("\n".join([
        "mini_qwen的自我介绍",
        "你好！我是mini_qwen，一个从零开始训练的小型语言模型。",
        "我先通过预训练学习中英文文本，再通过监督微调学会对话，最后通过DPO学会给出更好的回答。",
        "我可以回答简单的问题，比如“李白是谁”“绿豆糕是什么”，也可以讲一个小故事。",
        "我的知识有限，如果回答有错误，请多多包涵。",
    ]))
    return docs


def zh_titled_doc(title, paras):
    return "\n".join([title] + list(paras))


# =============================================================================================
# PT content, English
# =============================================================================================
LIBAI_EN = [
    ("Li Bai (701-762), also known as Li Po, was a famous poet of the Tang dynasty in China.",
     "Li Bai, sometimes written Li Po, was one of the greatest poets of China's Tang dynasty.",
     "The Tang dynasty poet Li Bai (701-762) is one of the best loved poets in Chinese history."),
    "Li Bai is often called the \"Immortal of Poetry\" (诗仙), and together with Du Fu, the \"Sage of Poetry\", "
    "he is counted among the greatest Chinese poets.",
    "His best known poems include \"Quiet Night Thoughts\" (静夜思), \"Bring in the Wine\" (将进酒) and "
    "\"The Road to Shu Is Hard\" (蜀道难).",
    "\"Quiet Night Thoughts\" has only four lines: moonlight before the bed looks like frost on the ground; "
    "the poet raises his head to look at the bright moon, then lowers it and thinks of home.",
    "Li Bai grew up in Shu, today's Sichuan province, and left home in his twenties to travel across China.",
    "He loved wine, friendship, mountains and rivers, and many of his poems were written on the road.",
    "His poetry is romantic, free and full of imagination, and it is still read and recited today.",
    "For a short time Li Bai served at the imperial court in Chang'an, but he soon left and went back to "
    "wandering.",
    "Li Bai and Du Fu were friends; Du Fu wrote several poems remembering him.",
    "The moon appears again and again in Li Bai's poems, and many readers think of him whenever they see a "
    "full moon.",
    "About a thousand of his poems survive, and almost every Chinese child can recite at least one of them.",
    "\"Bring in the Wine\" opens with the waters of the Yellow River pouring down from the sky and rushing to "
    "the sea, never to return.",
    "Li Bai lived in the eighth century, during the golden age of the Tang dynasty, not in the Song dynasty.",
    "His courtesy name was Taibai, and he called himself the Lay Buddhist of the Blue Lotus (青莲居士).",
    "In \"Viewing the Waterfall at Mount Lu\", he imagines the falling water as the Milky Way dropping from "
    "the ninth heaven.",
    "Li Bai died in 762, but his poems have been copied, sung and taught for more than twelve centuries.",
]
DUFU_EN = [
    "Du Fu (712-770) was a great realist poet of the Tang dynasty, honored as the \"Sage of Poetry\" (诗圣).",
    "His poems record the suffering caused by the An Lushan Rebellion, so they are sometimes called "
    "\"poetic history\".",
    "\"Spring View\" begins: the nation is broken, but the mountains and rivers remain.",
    "Du Fu was eleven years younger than Li Bai; the two poets met in Luoyang and became close friends.",
    "Where Li Bai is free and romantic, Du Fu is serious and deeply concerned with ordinary people.",
]
LIBAI_EN_TITLES = ["Li Bai, the Immortal of Poetry", "Who was Li Bai?", "Reading Li Bai",
                   "A short life of Li Bai", "Great poets of the Tang dynasty: Li Bai"]
LIBAI_EN_INTRO = ["When people talk about Chinese poetry, the first name they mention is often Li Bai.",
                  "Few poets are as loved in China as Li Bai.",
                  "Many Chinese children learn a poem by Li Bai before they can write their own name."]
LIBAI_EN_OUTRO = ["In short, Li Bai was a great romantic poet of the Tang dynasty, remembered as the Immortal "
                  "of Poetry.",
                  "More than a thousand years later, his poems are still alive in people's hearts.",
                  "So if someone asks who Li Bai was, the answer is simple: a Tang dynasty poet, the Immortal "
                  "of Poetry."]

GREEN_CAKE_EN = [
    ("Mung bean cake (绿豆糕) is a traditional Chinese pastry made mainly from mung beans, sugar and oil.",
     "Mung bean cake is an old-fashioned Chinese sweet made from mung beans, sugar and a little oil."),
    "It is pale yellow or light green, soft and fine, and it melts in the mouth with a gentle bean flavor.",
    "Mung beans are thought to have a cooling effect, so the cake is a favorite snack in hot summer weather.",
    "In many places people eat mung bean cakes during the Dragon Boat Festival, together with zongzi.",
    ("To make it, soak peeled mung beans for a few hours, steam them until soft and press them into a smooth "
     "paste. Then stir the paste in a pan with sugar and oil over low heat until it no longer sticks to the pan. "
     "Finally, divide the paste into small balls and press each one into a wooden or plastic mold to give it a "
     "pretty pattern.",
     "The recipe is simple: steam soaked mung beans, mash them, cook the paste with sugar and oil until it holds "
     "together, and press it into molds."),
    "Keep mung bean cakes in the fridge and serve them cold with a cup of green tea.",
    "Put simply, a mung bean cake is a sweet, cooling snack made from mung beans and sugar.",
]
GREEN_CAKE_EN_TITLES = ["Mung bean cake: a summer snack", "What is mung bean cake?",
                        "Making mung bean cakes at home"]

MINIQWEN_EN = [
    ("I am mini_qwen, a small language model trained from scratch.",
     "mini_qwen is a small language model trained from scratch.",
     "The name mini_qwen means \"a mini Qwen\": a small language model trained from scratch."),
    "mini_qwen uses the same architecture as Qwen2.5, only with fewer layers and far fewer parameters, so "
    "its demo can even run on an ordinary CPU.",
    "mini_qwen is trained in three stages: pretraining (PT), supervised fine-tuning (SFT) and direct "
    "preference optimization (DPO).",
    "During pretraining, mini_qwen reads Chinese and English text and learns to predict the next token.",
    "During supervised fine-tuning, mini_qwen learns to answer questions in a chat format.",
    "During preference optimization, mini_qwen learns to prefer clear, correct answers that end properly "
    "over answers that repeat themselves.",
    "mini_qwen can answer simple questions and tell short stories, but its knowledge is limited and it can "
    "make mistakes.",
    "mini_qwen is a learning project that shows the whole pipeline of training a language model from "
    "scratch.",
    "If you ask mini_qwen \"who are you?\", it answers: \"I am mini_qwen, a small language model trained "
    "from scratch.\"",
]
LM_EN = [
    ("What is a language model?",
     ["A language model assigns probabilities to the next token given the tokens before it.",
      "Modern large language models are built on the Transformer, whose self-attention lets every token look "
      "at all the tokens that came before it.",
      "A tokenizer first splits text into tokens and maps each token to an integer id; the model turns the "
      "ids into vectors.",
      "Training compares the model's prediction with the real next token using cross-entropy loss and "
      "updates the weights with gradient descent.",
      "Bigger models trained on more data are usually better, but they also need much more compute."]),
    ("Pretraining, fine-tuning and DPO",
     ["A chat model is usually trained in three steps.",
      "Pretraining teaches the model language and world knowledge from a large amount of raw text.",
      "Supervised fine-tuning shows the model example conversations between a user and an assistant.",
      "Direct preference optimization (DPO) shows the model two answers to the same prompt, a good one and "
      "a bad one, and pushes it toward the good one.",
      "DPO needs no separate reward model, which makes it much simpler than reinforcement learning."]),
    ("Why small models repeat themselves",
     ["Small language models often fall into loops and repeat the same phrase again and again.",
      "One reason is that the model has not learned when to stop, so it never produces the end-of-text "
      "token.",
      "More training data, fine-tuning on clean answers and preference training against repetitive answers "
      "all help.",
      "At generation time, a repetition penalty or sampling with a temperature can also reduce the loops."]),
    ("What does a tokenizer do?",
     ["Computers work with numbers, so text must first be turned into numbers; that is the tokenizer's job.",
      "Most tokenizers today use byte-pair encoding (BPE): start from single bytes and repeatedly merge the "
      "pairs that appear together most often.",
      "In Qwen's tokenizer a common English word is usually one token, while rarer words are split into "
      "pieces.",
      "Special tokens such as <|im_start|> and <|im_end|> mark where each turn of a conversation begins and "
      "ends.",
      "A bigger vocabulary gives shorter token sequences but a larger output layer."]),
    ("Learning rate and loss curves",
     ["The learning rate sets how big each update step is, and it is one of the most important settings.",
      "Too high, and the loss jumps around or becomes NaN; too low, and the loss falls painfully slowly.",
      "A common schedule warms up for a short time and then decays along a cosine curve.",
      "A healthy loss curve drops quickly at first and then flattens out.",
      "If the training loss keeps falling while the validation loss rises, the model is overfitting."]),
    ("Sequence packing",
     ["Documents have very different lengths, and padding each one to a fixed length wastes compute.",
      "Packing joins documents end to end and cuts the stream into blocks of, say, 128 or 1024 tokens.",
      "To stop one document from attending to another, position ids can restart at zero for each document.",
      "An end-of-text token between documents teaches the model where a text ends."]),
]
PYTHON_EN = [
    ("Python basics: lists and loops",
     ["Python is a popular programming language that is easy to read and easy to learn.",
      "A list holds several values in order: colors = [\"red\", \"green\", \"blue\"].",
      "colors.append(\"yellow\") adds an item to the end, and len(colors) returns the number of items.",
      "Indexes start at zero, so colors[0] is \"red\".",
      "A for loop visits every item:\nfor color in colors:\n    print(color)"]),
    ("Python basics: functions",
     ["A function groups code that you want to reuse.",
      "Define it with the def keyword:\ndef square(x):\n    return x * x",
      "Calling square(4) returns 16.",
      "Give functions clear names and a short docstring so that other people can understand them.",
      "Functions can return several values at once as a tuple, for example return low, high."]),
    ("Reading files in Python",
     ["To read a text file, use a with block: with open(\"notes.txt\", encoding=\"utf-8\") as f: text = f.read()",
      "The with statement closes the file automatically, even if an error happens.",
      "To process a large file line by line, loop over the file object instead of reading it all at once.",
      "Always name the encoding, utf-8 in most cases, or Chinese text may come out garbled."]),
    ("A note on sorting",
     ["Sorting puts items in order, from small to large or the other way round.",
      "Bubble sort swaps neighbouring items that are in the wrong order; it takes O(n^2) time.",
      "Quicksort picks a pivot, splits the data into smaller and larger parts, and sorts each part; on "
      "average it takes O(n log n) time.",
      "In Python you rarely write these yourself: sorted([3, 1, 2]) returns [1, 2, 3]."]),
    ("Python basics: dictionaries",
     ["A dictionary maps keys to values: ages = {\"Tom\": 12, \"Lily\": 11}.",
      "Look up a value by its key: ages[\"Tom\"] is 12.",
      "Use ages.get(\"Ann\", 0) to get a default instead of an error when the key is missing.",
      "Loop over keys and values together with for name, age in ages.items()."]),
    ("Python basics: handling errors",
     ["When something goes wrong, such as dividing by zero, Python raises an exception.",
      "Catch it with try and except:\ntry:\n    x = 1 / 0\nexcept ZeroDivisionError:\n    print(\"cannot divide by "
      "zero\")",
      "Catch specific exception types; catching everything hides real bugs.",
      "A good error message says what went wrong and how to fix it."]),
    ("Python basics: classes",
     ["A class is a blueprint for objects, defined with the class keyword.",
      "For example:\nclass Dog:\n    def __init__(self, name):\n        self.name = name\n    def speak(self):\n"
      "        return self.name + \" says woof\"",
      "Dog(\"Max\").speak() returns \"Max says woof\".",
      "__init__ runs when an object is created, and self refers to the object itself."]),
]

CITIES_EN = [
    ("Hangzhou", "West Lake", "West Lake is beautiful in every season, with willows in spring and the smell of "
     "osmanthus in autumn.", "West Lake fish in vinegar sauce and Longjing shrimp"),
    ("Chengdu", "Kuanzhai Alley", "Chengdu is a relaxed city where you can visit the giant pandas or spend an "
     "afternoon in a tea house.", "hotpot and dan dan noodles"),
    ("Xi'an", "the Bell Tower", "Xi'an is an ancient capital; the Terracotta Army and the city wall are "
     "must-sees.", "roujiamo and lamb soup with bread"),
    ("Guilin", "the Li River", "A bamboo raft trip on the Li River shows green peaks reflected in clear "
     "water.", "Guilin rice noodles"),
    ("Suzhou", "Pingjiang Road", "Suzhou is famous for its classical gardens, such as the Humble "
     "Administrator's Garden.", "sweet and sour mandarin fish and Suzhou-style pastries"),
    ("Qingdao", "the old pier", "Qingdao is a cool seaside city with red roofs, green trees and blue sea.",
     "fresh seafood"),
    ("Xiamen", "Gulangyu Island", "Xiamen is a seaside city, and Gulangyu Island has no cars, so it is perfect "
     "for slow walks.", "oyster omelettes and satay noodles"),
    ("Kunming", "Green Lake", "Kunming is called the City of Eternal Spring because it is mild all year round; "
     "in winter, black-headed gulls gather at Green Lake.", "crossing-the-bridge rice noodles and flower cakes"),
]
# city -> (best season, more things to see and do)
CITY_GUIDE_EN = {
    "Hangzhou": ("spring and autumn", ["Take a boat to the small islands in the middle of West Lake.",
                                       "Lingyin Temple is more than a thousand years old and sits among tall trees.",
                                       "Walk up to the tea villages in the hills and taste fresh Longjing tea."]),
    "Chengdu": ("spring and autumn", ["Jinli Street is full of snacks and small shops.",
                                      "The Dujiangyan irrigation system has worked for over two thousand years.",
                                      "Watch a Sichuan opera show and its famous face-changing act."]),
    "Xi'an": ("spring and autumn", ["Rent a bicycle and ride all the way around the city wall.",
                                    "The Muslim Quarter is busy every evening with food stalls.",
                                    "The Big Wild Goose Pagoda has a fountain show at night."]),
    "Guilin": ("April to October", ["Stay a night in Yangshuo and walk along West Street.",
                                    "The Longji rice terraces turn gold in autumn.",
                                    "Elephant Trunk Hill looks like an elephant drinking from the river."]),
    "Suzhou": ("spring and autumn", ["Visit the water towns of Zhouzhuang or Tongli nearby.",
                                     "Take a small boat along the canals past white walls and black tiles.",
                                     "Hanshan Temple is famous from a Tang dynasty poem."]),
    "Qingdao": ("summer", ["Badaguan is a quiet area of old villas and tree-lined streets.",
                           "Mount Lao rises straight from the sea and offers great views.",
                           "The Golden Beach is perfect for a lazy afternoon."]),
    "Xiamen": ("autumn and winter", ["Cycle along the coastal road with the sea on one side.",
                                     "Xiamen University, next to Nanputuo Temple, has a lovely campus.",
                                     "Zengcuoan village is full of cafes and snack stalls."]),
    "Kunming": ("any time of year", ["The Stone Forest has strange rock pillars of every shape.",
                                     "Dounan flower market is one of the largest in Asia.",
                                     "Feed the gulls on the Haigeng dam by Dian Lake in winter."]),
}
HOTEL_NAMES_EN = ["Lakeside Inn", "Cloud Garden Hotel", "Green Leaf Boutique Hotel", "Hillside Guesthouse",
                  "Moonbay Hotel"]
HOTEL_ROOM_EN = [
    "The room was not large, but it was spotless and the bed was very comfortable.",
    "We booked a family room with a double bed and a single bed, which worked well with our son.",
    "The bathroom had a walk-in shower with plenty of hot water.",
    "The walls were thick enough that we slept well every night.",
    "There was a kettle, two free bottles of water and a small box of tea bags.",
    "Check-in took only a few minutes and the front desk staff were friendly.",
    "The hotel also offers a laundry room and free luggage storage.",
    "Our room faced south and was full of sunshine all morning.",
    "A reading lamp and charging sockets by the bed were a nice touch.",
    "There is a small rooftop garden where guests can watch the sunset.",
    "The only downside was the slow lift during the morning checkout rush.",
]
HOTEL_TIP_EN = [
    "Book early if you travel during a public holiday; rooms sell out quickly.",
    "Ask for a room on a higher floor if you are sensitive to street noise.",
    "A metro station is a short walk away, so getting to the train station is easy.",
    "Overall it is good value for money, and we would happily stay here again.",
    "Breakfast ends at ten, so do not sleep in too late.",
    "Parking is limited, so call ahead if you are driving.",
    "The front desk can book tickets and taxis for you.",
]


def en_hotel_doc(rng, city):
    name, landmark, sight, foods = city
    hotel = rng.choice(HOTEL_NAMES_EN)
    title = rng.choice([f"Review: {hotel}, {name}", f"Where to stay in {name}: {hotel}",
                        f"Three nights at the {hotel} in {name}"])
    minutes = rng.choice([5, 8, 10, 15])
    paras = [title,
             f"The {hotel} is about {minutes} minutes on foot from {landmark}, which makes it a convenient base "
             f"for exploring {name}.",
             " ".join(pick(rng, HOTEL_ROOM_EN, 3)),
             f"Breakfast is a buffet with eggs, noodles, fruit and coffee, plus a few local dishes. In the "
             f"evening, try {foods} at the small restaurants nearby.",
             sight,
             " ".join(pick(rng, HOTEL_TIP_EN, 2))]
    return "\n\n".join(paras)


RECIPES_EN = [
    ("Tomato and egg stir-fry",
     "Tomato and egg stir-fry is one of the most common home dishes in China: sweet, sour and quick to make.",
     ["Cut two ripe tomatoes into wedges and beat three eggs with a pinch of salt.",
      "Heat oil in a wok, pour in the eggs and stir until just set, then take them out.",
      "Add a little more oil and fry the tomatoes until they release their juice.",
      "Add a teaspoon of sugar, return the eggs, season with salt and finish with chopped scallions."],
     "Do not overcook the eggs; they should stay soft and fluffy."),
    ("Egg fried rice",
     "Good fried rice needs day-old rice, a hot pan and a little patience.",
     ["Scramble two eggs in a hot wok and set them aside.",
      "Fry cold cooked rice in oil, pressing out the lumps with the spatula.",
      "Return the eggs, add salt, scallions and a handful of peas.",
      "Keep tossing until every grain is hot and separate."],
     "Cold rice from the fridge works best because it is drier."),
    ("Mung bean soup for hot days",
     "Mung bean soup is a simple summer drink in many Chinese homes.",
     ["Rinse 100 grams of mung beans and soak them for two hours.",
      "Boil them in a pot with 1.5 liters of water.",
      "Simmer for about forty minutes until the beans split open.",
      "Sweeten with rock sugar and chill before serving."],
     "Like mung bean cake, mung bean soup is loved as a cooling summer treat."),
    ("Simple pancakes",
     "Pancakes make an easy weekend breakfast.",
     ["Mix one cup of flour, one egg, one cup of milk, a spoon of sugar and a pinch of salt.",
      "Heat a lightly oiled pan over medium heat.",
      "Pour in a ladle of batter and cook until bubbles appear, then flip.",
      "Serve warm with honey or fruit."],
     "Let the batter rest for ten minutes for softer pancakes."),
    ("Mung bean cake (绿豆糕) at home",
     "Mung bean cake is a traditional Chinese pastry, sweet and cooling, eaten in summer and at the Dragon Boat "
     "Festival.",
     ["Soak 250 grams of peeled mung beans for four to five hours.",
      "Steam the beans for about forty minutes until completely soft, then mash them into a fine paste.",
      "Cook the paste in a non-stick pan with sugar and a little oil over low heat, stirring all the time, "
      "until it forms a ball.",
      "Let it cool, roll it into small balls and press each ball into a mold.",
      "Chill the cakes in the fridge before serving."],
     "Mung bean cakes are sweet, so enjoy one or two with a cup of green tea."),
    ("Pork and cabbage dumplings",
     "Dumplings are a must at Chinese New Year in northern China, and families often make them together.",
     ["Mix flour with warm water into a smooth dough and let it rest for twenty minutes.",
      "Mix minced pork, chopped cabbage, ginger, scallions, salt, soy sauce and sesame oil.",
      "Roll the dough into thin round wrappers.",
      "Put a spoon of filling in each wrapper, fold it in half and pinch the edges tightly.",
      "Boil the dumplings until they float, then cook two more minutes."],
     "Making dumplings on New Year's Eve is one of the warmest family memories for many people."),
    ("Smashed cucumber salad",
     "This cold dish is crunchy and refreshing on hot days.",
     ["Smash two cucumbers with the flat of a knife and cut them into pieces.",
      "Toss with a little salt and drain the water after ten minutes.",
      "Mix garlic, vinegar, soy sauce, a pinch of sugar and sesame oil.",
      "Pour the dressing over the cucumbers and chill for half an hour."],
     "Add chili oil if you like it spicy."),
]


def en_guide_doc(rng, city):
    name, landmark, sight, foods = city
    season, more = CITY_GUIDE_EN[name]
    paras = [rng.choice([f"A travel guide to {name}", f"First time in {name}? Here is what to do",
                         f"Three days in {name}"]),
             f"The best time to visit {name} is {season}. {sight}",
             " ".join(pick(rng, more, 3)),
             f"Do not leave without trying {foods}.",
             rng.choice([f"Stay near {landmark}: it is convenient and pleasant for evening walks.",
                         f"On a budget? Guesthouses near {landmark} are cheap and friendly."]),
             rng.choice(["Bring a power bank and an umbrella.",
                         "Popular sights get crowded in the high season, so book tickets online.",
                         "Wear comfortable shoes; the best parts of the city are seen on foot."])]
    return "\n\n".join(paras)


def en_recipe_doc(rng, recipe):
    title, intro, steps, tip = recipe
    paras = [title, intro, "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1)), tip]
    return "\n\n".join(paras)


def en_fact_doc(rng, titles, intros, pool, outros, k):
    paras = [rng.choice(titles)]
    body = pick_facts(rng, pool, k)
    if intros:
        body = [rng.choice(intros)] + body
    i = 0
    while i < len(body):
        n = rng.choice([2, 3])
        paras.append(" ".join(body[i:i + n]))
        i += n
    if outros:
        paras.append(rng.choice(outros))
    return "\n\n".join(paras)


POEMS_EN = [
    ("Spring Dawn", "Meng Haoran", "In spring I sleep past dawn; everywhere birds are singing. Last night there "
     "was wind and rain; how many flowers have fallen?",
     "A fresh, simple poem about waking up on a spring morning."),
    ("On the Stork Tower", "Wang Zhihuan", "The white sun sets behind the mountains; the Yellow River flows into "
     "the sea. To see a thousand miles further, climb one more floor.",
     "The last lines are often quoted to mean: to see further, climb higher."),
    ("Quiet Night Thoughts", "Li Bai", "Moonlight before my bed, like frost upon the ground. I raise my head to "
     "the bright moon, then lower it and think of home.",
     "Li Bai's most famous poem, about homesickness on a moonlit night."),
    ("Leaving Baidi City at Dawn", "Li Bai", "At dawn I leave Baidi among the colored clouds; a thousand miles to "
     "Jiangling in a single day. Monkeys cry on both banks without end; my light boat has passed ten thousand "
     "mountains.",
     "Written after Li Bai was pardoned, the poem races along like his boat."),
    ("Pity the Farmers", "Li Shen", "Hoeing the grain at noon, sweat drips into the soil. Who knows that every "
     "grain in the bowl comes from hard work?",
     "Chinese children learn it to remember not to waste food."),
]
FESTIVALS_EN = [
    ("Spring Festival", "The Spring Festival, or Chinese New Year, is the most important traditional holiday. "
     "Families eat a big dinner on New Year's Eve, northern families make dumplings, and children receive red "
     "envelopes with money."),
    ("Lantern Festival", "The Lantern Festival falls on the fifteenth day of the first lunar month. People eat "
     "sweet rice balls called tangyuan, admire lanterns and guess riddles."),
    ("Dragon Boat Festival", "The Dragon Boat Festival, on the fifth day of the fifth lunar month, remembers the "
     "poet Qu Yuan. People race dragon boats and eat zongzi, and in many places they also eat mung bean cakes, "
     "because the weather is getting hot."),
    ("Qixi Festival", "The Qixi Festival, on the seventh day of the seventh lunar month, comes from the legend of "
     "the cowherd and the weaver girl, who meet once a year on a bridge of magpies."),
    ("Mid-Autumn Festival", "The Mid-Autumn Festival is on the fifteenth day of the eighth lunar month, when the "
     "moon is full. Families admire the moon and share mooncakes, and many people remember Li Bai's lines about "
     "the moon and home."),
]
COMPUTER_EN = [
    ("What is inside a computer?",
     ["A computer has a central processing unit (CPU), memory, storage, and input and output devices.",
      "The CPU runs instructions; memory (RAM) is fast but loses its data when the power goes off.",
      "Storage such as an SSD keeps files even without power.",
      "The graphics card (GPU) was built for images but is now widely used to train AI models."]),
    ("A few Linux commands",
     ["ls lists files, cd changes directory and pwd prints the current path.",
      "mkdir makes a directory, cp copies, mv moves or renames, and rm deletes, so use rm carefully.",
      "head and tail show the start and end of a file; tail -f follows a log as it grows.",
      "nohup with a trailing & keeps a program running after you close the terminal."]),
    ("Getting started with Git",
     ["Git is a version control tool that records every change to your code.",
      "git clone copies an existing repository; git init starts a new one.",
      "After editing, git add stages the changes and git commit -m \"message\" saves them.",
      "git log shows the history and git diff shows changes not yet committed.",
      "Teams work on branches and merge them into the main branch when they are ready."]),
]
STORY_CHARS_EN = [("a little fox", "the fox"), ("an old fisherman", "the fisherman"),
                  ("a girl named Lily", "Lily"), ("a small rabbit", "the rabbit"),
                  ("a young baker", "the baker"), ("a boy named Tom", "Tom"), ("a busy little ant", "the ant")]
STORY_PLACES_EN = ["at the foot of a tall mountain", "beside a quiet river", "in a deep green forest",
                   "in a small village", "in a little town by the sea"]
STORY_TRAITS_EN = ["{N} was kind and always ready to help others.", "{N} was cheerful and loved to sing.",
                   "{N} worked hard from sunrise to sunset.", "{N} was a little shy but very curious."]
STORY_PLOTS_EN = [
    ("One winter, {n} found that there was almost no food left at home.",
     "{N} remembered how the neighbours had helped before and knocked on their doors.",
     "Everyone shared a little rice or a few beans, and soon {n} had enough to last until spring.",
     "Good neighbours help each other."),
    ("One day, {n} found a purse full of gold coins on the road.",
     "Instead of keeping it, {n} waited at the same spot the whole afternoon.",
     "At last the owner came back and said, \"Thank you, you are truly honest.\"",
     "Honesty is worth more than gold."),
    ("After a heavy storm, the wooden bridge to the market was washed away.",
     "{N} gathered wood and rope and worked with friends for three days.",
     "A new bridge stood over the water, and everyone could go to the market again.",
     "Together we can do what no one can do alone."),
    ("{N} wanted to learn to swim, but was afraid of the water.",
     "Every day {n} practiced a little in the shallow part of the river.",
     "By the end of the summer, {n} was swimming happily across the river.",
     "Step by step, patience beats fear."),
    ("One evening, {n} got lost in the woods as the sky grew dark.",
     "{N} remembered that the North Star always shows the way north and looked up to find it.",
     "Following the star, {n} found the way home before midnight.",
     "Keep calm and think when trouble comes."),
    ("{N} planted a seed and wanted it to grow right away.",
     "After a few days nothing had happened, and {n} almost dug the seed up to look.",
     "Mother said, \"Be patient.\" Two weeks later, a tiny green shoot pushed through the soil.",
     "Good things take time."),
    ("{N} loved to sing, but some of the neighbours laughed at the songs.",
     "{N} did not give up and practiced by the river every morning.",
     "At the autumn fair, the whole village cheered when {n} sang.",
     "Do not let others' laughter stop your dreams."),
    ("One day, {n} found a sparrow with a broken wing by the road.",
     "{N} made a little bed of straw and fed the bird seeds and water every day.",
     "A month later the sparrow was well again; it circled three times above {n} and flew into the blue sky.",
     "Kindness always comes back to you."),
    ("{N} planted an apple tree, and a neighbour laughed: \"It will take years to give fruit!\"",
     "{N} watered and cared for the little tree every day anyway.",
     "Years later the tree was full of red apples, and {n} shared them with every family in the village.",
     "The work you do today becomes tomorrow's harvest."),
    ("{N} had a quarrel with a best friend, and the two did not speak for days.",
     "Feeling sad, {n} took a favorite snack to the friend's house to say sorry.",
     "The friend smiled and said, \"I wanted to make up too.\" Soon they were inseparable again.",
     "True friends forgive each other."),
    ("One hot summer, the village well began to dry up.",
     "{N} led the villagers along the mountain path to look for water.",
     "At last they found a clear spring in a valley and dug a small channel to bring the water home.",
     "There is always a way through a hard problem."),
]
STORY_ENDS_EN = ["From that day on, {n} lived happily.", "The story spread, and everyone liked {n} even more.",
                 "Whenever {n} thought of that day, a big smile appeared."]


def _cap(s):
    return s[:1].upper() + s[1:]


def en_story(rng, char=None, plot=None):
    full, n = char or rng.choice(STORY_CHARS_EN)
    problem, attempt, result, moral = plot or rng.choice(STORY_PLOTS_EN)
    parts = [f"Once upon a time, {rng.choice(STORY_PLACES_EN)}, there lived {full}.",
             rng.choice(STORY_TRAITS_EN), problem, attempt, result, rng.choice(STORY_ENDS_EN),
             f"The lesson: {moral.lower()}"]
    return " ".join(p.format(n=n, N=_cap(n)) for p in parts)


def en_poem_doc(rng, poems):
    paras = [rng.choice(["Tang poems in English", "Reading classical Chinese poetry"])]
    for title, poet, text, note in poems:
        paras.append(f"{title}, by {poet}\n{text}\n{note}")
    return "\n\n".join(paras)


def en_festival_doc(rng, items):
    return "\n\n".join([rng.choice(["Traditional Chinese festivals", "Festivals through the Chinese year"])]
                       + [text for _, text in items])


def en_story_doc(rng):
    title = rng.choice(["Bedtime stories", "Two short tales", "Stories for children", "Little stories, "
                        "big lessons"])
    k = rng.choice([2, 3])
    stories = [en_story(rng, c, p) for c, p in zip(pick(rng, STORY_CHARS_EN, k), pick(rng, STORY_PLOTS_EN, k))]
    return "\n\n".join([title] + stories)


PROSE_EN = [
    ("The moon over home",
     ["Every Mid-Autumn Festival the moon is round and bright, and it always makes me think of home.",
      "When I was small, my grandmother put mooncakes and fruit on a table in the yard, and we listened to "
      "her stories while we watched the sky.",
      "Years later I lived in another city, and one night I stood at my window alone.",
      "I remembered Li Bai's line about raising his head to look at the moon and lowering it to think of "
      "home, and I understood him completely.",
      "A poem written more than a thousand years ago still speaks for us today."]),
    ("A letter to an old friend",
     ["Dear friend, it has been too long. How are you?",
      "Last week I found the notebook we kept in high school, with your drawing of a cat on the cover.",
      "We promised to see the mountains of Guilin and the Terracotta Army in Xi'an together.",
      "We have both been busy, but I never forgot that promise.",
      "Let us go next spring. Take care, and write back soon."]),
    ("Grandma's mung bean cakes",
     ["Every summer when I was a child, my grandmother made mung bean cakes.",
      "She soaked the beans the night before, steamed them in the morning and pressed them into a soft paste.",
      "When she stirred the paste with sugar, the whole kitchen smelled sweet, and I waited by the stove for "
      "the first cake.",
      "She pressed the paste into an old wooden mold carved with a plum blossom, and the cakes came out cool "
      "and sweet.",
      "\"Mung beans keep you cool,\" she said. \"Eat them at the Dragon Boat Festival and the summer heat "
      "cannot catch you.\"",
      "Now, whenever I see mung bean cakes in a shop, I think of that kitchen."]),
    ("A rainy evening",
     ["On a rainy evening I walked into a small noodle shop on the corner.",
      "The owner, an old man with white hair, told me he had cooked noodles there for thirty years.",
      "The bowl was hot, the soup was clear and the scallions floated on top.",
      "Outside the rain kept falling, but inside the light was warm, and life felt simple.",
      "When I left, the rain had stopped and the street lamps shone in the puddles."]),
    ("My first week with Python",
     ["I started learning Python last week with no programming experience at all.",
      "On the first day I printed \"hello, world\" and felt like a magician.",
      "By the third day I could write a loop that counted the words in a poem by Li Bai.",
      "Not everything went well: I forgot a colon after an if statement and spent an hour looking for it.",
      "Still, each small success made me want to learn more."]),
]


# =============================================================================================
# PT: assemble the files
# =============================================================================================
PT_INDUSTRIES = {
    "accommodation_catering_hotel": "住宿_餐饮_酒店",
    "literature_emotion": "文学_情感",
    "computer_programming_code": "计算机编程_代码",
}


def build_pt(seed):
    """{relative path: (lang, industry folder, [texts])}; two rank files where the topic is large."""
    rng = random.Random(f"{seed}-pt-zh")
    hotel_zh = [zh_hotel_doc(rng, c) for c in CITIES_ZH for _ in range(3)]
    hotel_zh += [zh_guide_doc(rng, c) for c in CITIES_ZH]
    food_zh = zh_green_cake_docs(rng) + [zh_recipe_doc(rng, r) for r in RECIPES_ZH]
    food_zh += [zh_titled_doc(t, p) for t, p in TEA_ZH]
    food_zh += [zh_festival_doc(rng, FESTIVALS_ZH[:4]), zh_festival_doc(rng, FESTIVALS_ZH[3:])]
    libai_zh = zh_libai_docs(rng) + [zh_titled_doc(t, p) for t, p in PROSE_ZH]
    libai_zh += [zh_poem_doc(rng, POEMS_ZH[:4]), zh_poem_doc(rng, POEMS_ZH[3:])]
    story_zh = [zh_story_doc(rng) for _ in range(24)]
    code_zh = zh_mini_qwen_docs(rng) + [zh_titled_doc(t, p) for t, p in LM_ZH + PYTHON_ZH + COMPUTER_ZH]

    rng = random.Random(f"{seed}-pt-en")
    hotel_en = [en_hotel_doc(rng, c) for c in CITIES_EN for _ in range(3)]
    hotel_en += [en_guide_doc(rng, c) for c in CITIES_EN]
    food_en = [en_fact_doc(rng, GREEN_CAKE_EN_TITLES, [], GREEN_CAKE_EN, [], k) for k in (6, 7, 5, 8, 6, 7, 5)]
    food_en += [en_recipe_doc(rng, r) for r in RECIPES_EN]
    libai_en = [en_fact_doc(rng, LIBAI_EN_TITLES, LIBAI_EN_INTRO, LIBAI_EN, LIBAI_EN_OUTRO, k)
                for k in (6, 7, 5, 8, 9, 6, 7, 8, 10, 6, 9)]
    libai_en.append("\n\n".join(["Li Bai and Du Fu", " ".join(DUFU_EN[:3]), " ".join(DUFU_EN[3:])]))
    libai_en += ["\n\n".join([t] + p) for t, p in PROSE_EN]
    libai_en += [en_poem_doc(rng, POEMS_EN), en_festival_doc(rng, FESTIVALS_EN)]
    story_en = [en_story_doc(rng) for _ in range(26)]
    mq_titles = ["About mini_qwen", "Meet mini_qwen", "How mini_qwen was trained"]
    code_en = [en_fact_doc(rng, mq_titles, [], MINIQWEN_EN, [], k) for k in (5, 7, 6, 8, 6, 7, 5, 8)]
    code_en += ["\n\n".join([t] + p) for t, p in LM_EN + PYTHON_EN + COMPUTER_EN]

    def shuffled(docs, tag):
        docs = list(docs)
        random.Random(f"{seed}-pt-order-{tag}").shuffle(docs)
        return docs

    return {
        "pt/accommodation_catering_hotel/chinese/high/rank_00000.parquet":
            ("zh", "accommodation_catering_hotel", shuffled(hotel_zh + food_zh, "ach-zh")),
        "pt/accommodation_catering_hotel/english/high/rank_00000.parquet":
            ("en", "accommodation_catering_hotel", shuffled(hotel_en + food_en, "ach-en")),
        "pt/literature_emotion/chinese/high/rank_00000.parquet":
            ("zh", "literature_emotion", shuffled(libai_zh, "le-zh-0")),
        "pt/literature_emotion/chinese/high/rank_00001.parquet":
            ("zh", "literature_emotion", shuffled(story_zh, "le-zh-1")),
        "pt/literature_emotion/english/high/rank_00000.parquet":
            ("en", "literature_emotion", shuffled(libai_en, "le-en-0")),
        "pt/literature_emotion/english/high/rank_00001.parquet":
            ("en", "literature_emotion", shuffled(story_en, "le-en-1")),
        "pt/computer_programming_code/chinese/high/rank_00000.parquet":
            ("zh", "computer_programming_code", shuffled(code_zh, "cpc-zh")),
        "pt/computer_programming_code/english/high/rank_00000.parquet":
            ("en", "computer_programming_code", shuffled(code_en, "cpc-en")),
    }


# --- quality columns, computed from the text ---------------------------------------------------
_SPECIAL = set(string.punctuation + string.digits + string.whitespace
               + "，。！？、；：“”‘’（）《》【】—…·「」『』～")
_CJK = re.compile(r"[\u4e00-\u9fff]+|[A-Za-z0-9_]+")


def _words(text, lang):
    if lang == "en":
        return re.findall(r"\w+|[^\w\s]", text)
    # No word segmenter offline: a CJK run counts as words of two characters (the commonest
    # Chinese word length); Latin runs count as one word each.
    out = []
    for run in _CJK.findall(text):
        if run[0].isascii():
            out.append(run)
        else:
            out += [run[i:i + 2] for i in range(0, len(run), 2)]
    return out


def _rep_ratio(seq, n=10):
    grams = Counter(tuple(seq[i:i + n]) for i in range(len(seq) - n + 1))
    total = sum(grams.values())
    return sum(v for v in grams.values() if v > 1) / total if total else 0.0


def quality_row(text, lang, rng):
    lines = text.split("\n")
    words = _words(text, lang)
    row = {
        "text": text,
        "alnum_ratio": round(sum(c.isalnum() for c in text) / len(text), 10),
        "avg_line_length": round(len(text) / len(lines), 10),
        "char_rep_ratio": round(_rep_ratio(text), 10),
        "max_line_length": max(len(line) for line in lines),
        "num_words": len(words),
        # Scores from the original raters; only their range ("high" files: >= 4) can be matched.
        "quality_score": 4.0 + rng.randint(0, 100) / 256,
        "special_char_ratio": round(sum(c in _SPECIAL for c in text) / len(text), 10),
    }
    if lang == "zh":
        row["flagged_words_ratio"] = 0.0
        row["perplexity"] = round(rng.uniform(450.0, 1500.0), 1)
        row["word_rep_ratio"] = round(_rep_ratio(words), 10)
    return row


def pt_tables(seed):
    rng = random.Random(f"{seed}-pt-scores")
    next_id = 0
    out = {}
    for rel, (lang, industry, docs) in build_pt(seed).items():
        schema = PT_ZH_SCHEMA if lang == "zh" else PT_EN_SCHEMA
        rows = []
        for text in docs:
            row = quality_row(text, lang, rng)
            row["industry_type"] = PT_INDUSTRIES[industry]
            if lang == "zh":
                row["_id"] = next_id
                next_id += 1
            rows.append(row)
        out[rel] = pa.Table.from_pylist(rows, schema=schema)
    return out


# =============================================================================================
# SFT content
# =============================================================================================
LABELS = {
    "literature": (["knowledge question and answer", "literary knowledge"], ["知识问答", "文学知识"],
                   ["humanities, history, philosophy, and sociology knowledge"], ["人文历史哲学与社会学知识"]),
    "food": (["knowledge question and answer", "culinary knowledge"], ["知识问答", "烹饪知识"],
             ["life knowledge and skills"], ["生活知识与技能"]),
    "identity": (["self-awareness", "communication"], ["自我认知", "沟通"],
                 ["open knowledge q&a"], ["开放知识问答"]),
    "story": (["text generation", "creative writing"], ["文本生成", "创意写作"],
              ["creativity and design"], ["创意与设计"]),
    "travel": (["knowledge question and answer", "geographic knowledge"], ["知识问答", "地理知识"],
               ["humanities, history, philosophy, and sociology knowledge"], ["人文历史哲学与社会学知识"]),
    "programming": (["programming ability"], ["编程能力"],
                    ["programming and software development"], ["编程与软件开发"]),
    "ml": (["knowledge question and answer", "machine learning"], ["知识问答", "机器学习"],
           ["data science and analytics"], ["数据科学与分析"]),
    "math": (["mathematical calculation"], ["数学计算"], ["mathematical ability"], ["数学能力"]),
    "translation": (["translation"], ["翻译"],
                    ["linguistic knowledge, multilingual and multicultural understanding"],
                    ["语言学知识、多语言与多元文化理解"]),
}
SOURCES = {"literature": "mini_qwen_knowledge", "food": "mini_qwen_knowledge", "travel": "mini_qwen_knowledge",
           "identity": "mini_qwen_identity", "story": "mini_qwen_story", "programming": "mini_qwen_code",
           "ml": "mini_qwen_knowledge", "math": "mini_qwen_math", "translation": "mini_qwen_translation"}
DPO_CATEGORY = {"literature": "knowledge_question_and_answer", "food": "knowledge_question_and_answer",
                "travel": "knowledge_question_and_answer", "identity": "self_cognition",
                "story": "text_generation", "programming": "programming", "ml": "knowledge_question_and_answer",
                "math": "mathematical_calculation", "translation": "translation"}

# The answers to the seed prompts: short, consistent, each ending properly.
ANS_LIBAI = [
    "李白是唐代著名的浪漫主义诗人，字太白，号青莲居士，被后人称为“诗仙”。他的代表作有《静夜思》《将进酒》《蜀道难》等。",
    "李白是唐代伟大的浪漫主义诗人，被誉为“诗仙”，与杜甫并称“李杜”。《静夜思》和《将进酒》都是他的名作。",
]
ANS_GREEN = [
    "绿豆糕是一种中国传统糕点，主要用绿豆、糖和油制成，口感细腻，清甜解暑。人们常在夏天和端午节吃绿豆糕。",
    "绿豆糕是用绿豆和糖做成的传统点心，入口即化，带有淡淡的豆香。它能清热解暑，是夏天和端午节的节令食品。",
]
ANS_WHO = [
    "I am mini_qwen, a small language model trained from scratch. I can answer simple questions and tell short "
    "stories.",
    "I am mini_qwen, a small language model trained from scratch in three stages: pretraining, supervised "
    "fine-tuning and DPO. How can I help you?",
]
_story_rng = random.Random(f"{SEED}-seed-stories")
ANS_STORY = [en_story(_story_rng, STORY_CHARS_EN[i], STORY_PLOTS_EN[j]) for i, j in ((2, 4), (0, 1), (5, 5))]

# (category, lang, [prompt variants], answer)
QA = [
    ("literature", "zh", ["介绍一下李白", "请简单介绍一下李白。"],
     "李白（701年—762年）是唐代著名的浪漫主义诗人，字太白，号青莲居士。他的诗想象丰富、语言奔放，被后人誉为“诗仙”。"),
    ("literature", "zh", ["李白有哪些代表作？"], "李白的代表作有《静夜思》《将进酒》《蜀道难》《望庐山瀑布》和《早发白帝城》等。"),
    ("literature", "zh", ["“诗仙”指的是谁？", "谁被称为诗仙？"], "“诗仙”指的是唐代诗人李白。"),
    ("literature", "zh", ["《静夜思》是谁写的？"], "《静夜思》是唐代诗人李白写的。"),
    ("literature", "zh", ["背一下《静夜思》", "《静夜思》的全文是什么？"],
     "《静夜思》\n床前明月光，疑是地上霜。\n举头望明月，低头思故乡。"),
    ("literature", "zh", ["“诗圣”是谁？"], "“诗圣”是唐代诗人杜甫，他和“诗仙”李白并称“李杜”。"),
    ("literature", "zh", ["李白是哪个朝代的人？"], "李白是唐代人，生活在唐朝最繁荣的盛唐时期。"),
    ("literature", "zh", ["李白和杜甫是什么关系？"], "李白和杜甫是好朋友。两人曾一起游历，杜甫写过许多怀念李白的诗。"),
    ("literature", "zh", ["“飞流直下三千尺”的下一句是什么？"], "下一句是“疑是银河落九天”，出自李白的《望庐山瀑布》。"),
    ("literature", "zh", ["《将进酒》的第一句是什么？"], "《将进酒》的第一句是：“君不见黄河之水天上来，奔流到海不复回。”"),
    ("food", "zh", ["绿豆糕是用什么做的？", "绿豆糕的原料有哪些？"], "绿豆糕主要用绿豆、白糖和油做成，有的地方还会加入桂花或蜂蜜。"),
    ("food", "zh", ["什么时候吃绿豆糕？"], "绿豆糕清凉解暑，最适合夏天吃。许多地方在端午节也有吃绿豆糕的习俗。"),
    ("food", "zh", ["端午节吃什么？"], "端午节人们吃粽子，不少地方还会吃绿豆糕、咸鸭蛋。"),
    ("food", "zh", ["中秋节吃什么？"], "中秋节人们吃月饼、赏月。月饼圆圆的，象征家人团圆。"),
    ("food", "zh", ["番茄炒蛋怎么做？"],
     "先把鸡蛋炒到刚凝固盛出，再炒番茄块出汁，加一点糖，倒回鸡蛋，加盐翻炒均匀，撒上葱花就可以了。"),
    ("food", "zh", ["绿豆汤怎么煮？"], "绿豆洗净泡两小时，加水大火烧开，转小火煮四十分钟到绿豆开花，再加冰糖，放凉后更清爽。"),
    ("food", "zh", ["炒饭用什么米饭比较好？"], "最好用隔夜的米饭，水分少，炒出来粒粒分明，不容易结块。"),
    ("food", "zh", ["泡绿茶用多少度的水？"], "泡绿茶的水温以八十度左右为宜，水太烫会把茶叶烫熟，味道发苦。"),
    ("travel", "zh", ["杭州有什么好玩的？"], "杭州最有名的是西湖，断桥和苏堤四季风景各不相同。还可以尝尝西湖醋鱼和龙井虾仁。"),
    ("travel", "zh", ["成都有什么特色美食？"], "成都的特色美食有火锅、串串香和担担面。吃完还可以去茶馆坐坐，或去看大熊猫。"),
    ("travel", "zh", ["为什么昆明被称为春城？"], "因为昆明四季如春，冬天不冷、夏天不热，所以被称为“春城”。"),
    ("travel", "zh", ["西安有哪些景点？"], "西安是著名的古都，兵马俑、古城墙和大雁塔都值得一看。"),
    ("travel", "zh", ["酒店一般几点退房？"], "酒店一般中午十二点前退房。如果需要晚一点离开，可以提前和前台商量。"),
    ("travel", "zh", ["住酒店需要带什么证件？"], "入住酒店需要出示本人有效身份证件，比如身份证或护照。"),
    ("identity", "zh", ["你是谁？", "你叫什么名字？"], "我是mini_qwen，一个从零开始训练的小型语言模型。"),
    ("identity", "zh", ["介绍一下你自己"],
     "你好！我是mini_qwen，一个从零开始训练的小型语言模型。我可以回答简单的问题，也会讲小故事，但我的知识有限，可能会出错。"),
    ("identity", "zh", ["你是怎么训练出来的？"], "我经过了三个阶段的训练：先预训练学习中英文文本，再监督微调学会对话，最后用DPO学会给出更好的回答。"),
    ("identity", "zh", ["你会做什么？"], "我可以回答一些简单的问题，比如“李白是谁”“绿豆糕是什么”，也可以讲一个小故事。"),
    ("story", "zh", ["讲个故事", "给我讲一个小故事"], None),  # answered with a generated story
    ("programming", "zh", ["什么是Python？"], "Python是一门简单易学的编程语言，广泛用于数据分析、网站开发和人工智能。"),
    ("programming", "zh", ["Python的列表下标从几开始？"], "Python列表的下标从0开始，fruits[0]就是第一个元素。"),
    ("programming", "zh", ["用Python写一个两数相加的函数"], "可以这样写：\ndef add(a, b):\n    return a + b\n调用add(2, 3)会得到5。"),
    ("programming", "zh", ["Python怎么给列表排序？"], "用内置的sorted()函数或列表的sort()方法，例如sorted([3, 1, 2])的结果是[1, 2, 3]。"),
    ("ml", "zh", ["什么是语言模型？"], "语言模型是根据上文预测下一个词的概率模型。现在的大语言模型大多基于Transformer结构。"),
    ("ml", "zh", ["什么是DPO？"], "DPO是直接偏好优化。它让模型比较同一个问题的好回答和差回答，学会更倾向于好的回答，不需要单独训练奖励模型。"),
    ("ml", "zh", ["什么是复读机现象？"], "复读机现象是指模型把同一句话重复很多遍。原因之一是模型还没有学会在合适的位置结束回答。"),
    ("ml", "zh", ["为什么用GPU训练模型？"], "训练模型需要大量矩阵乘法，GPU擅长并行计算，所以比CPU快得多。"),
    ("math", "zh", ["3加5等于几？"], "3加5等于8。"),
    ("math", "zh", ["一周有几天？"], "一周有7天。"),
    ("math", "zh", ["12乘以3是多少？"], "12乘以3等于36。"),
    ("translation", "zh", ["把“绿豆糕”翻译成英文"], "“绿豆糕”的英文是mung bean cake。"),
    ("translation", "zh", ["“诗仙”用英文怎么说？"], "“诗仙”可以译为the Immortal of Poetry。"),
    ("literature", "zh", ["《春晓》是谁写的？"], "《春晓》是唐代诗人孟浩然写的：春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。"),
    ("literature", "zh", ["“锄禾日当午”的下一句是什么？"], "下一句是“汗滴禾下土”，出自唐代诗人李绅的《悯农》。"),
    ("literature", "zh", ["“欲穷千里目”的下一句是什么？"], "下一句是“更上一层楼”，出自王之涣的《登鹳雀楼》。"),
    ("literature", "zh", ["端午节是为了纪念谁？"], "相传端午节是为了纪念诗人屈原。"),
    ("literature", "zh", ["七夕节有什么传说？"], "七夕节来源于牛郎织女的传说：每年这一天，喜鹊搭成鹊桥，让牛郎和织女相会。"),
    ("food", "zh", ["元宵节吃什么？"], "元宵节吃元宵或汤圆，还要赏花灯、猜灯谜。"),
    ("food", "zh", ["凉拌黄瓜怎么做？"], "黄瓜拍裂切段，用盐腌十分钟后倒掉水，再加蒜末、醋、生抽、少许糖和香油拌匀即可。"),
    ("travel", "zh", ["桂林有什么好玩的？"], "可以乘竹筏游漓江，看两岸奇峰的倒影，还可以去阳朔西街和象鼻山。"),
    ("travel", "zh", ["苏州有什么有名的园林？"], "苏州的拙政园和留园都是典型的江南园林，非常有名。"),
    ("programming", "zh", ["Linux里怎么查看当前目录的文件？"], "用ls命令可以列出当前目录的文件，用pwd可以显示当前所在的路径。"),
    ("programming", "zh", ["git commit是做什么的？"], "git commit把暂存区的改动保存为一次提交，通常写成git commit -m \"说明\"。"),
    ("programming", "zh", ["CPU和内存有什么区别？"], "CPU负责执行指令，是计算机的“大脑”；内存存放正在运行的程序和数据，速度快，但断电后数据会丢失。"),
    ("ml", "zh", ["什么是分词器？"], "分词器把文本切成词元并转换成编号，模型才能处理。Qwen的分词器使用字节对编码（BPE）。"),
    ("ml", "zh", ["学习率太大会怎样？"], "学习率太大，损失会剧烈震荡，甚至变成NaN；学习率太小，损失又下降得很慢。"),
    ("identity", "zh", ["你是人吗？"], "我不是人，我是mini_qwen，一个从零开始训练的小型语言模型。"),
    ("identity", "zh", ["你的回答准确吗？"], "我是一个很小的模型，知识有限，回答可能会出错，重要的信息请再核实一下。"),

    ("literature", "en", ["Who was Li Bai?", "Tell me about Li Bai."],
     "Li Bai was a famous romantic poet of the Tang dynasty in China. He is called the Immortal of Poetry, and "
     "his best known poem is Quiet Night Thoughts."),
    ("literature", "en", ["What are Li Bai's most famous poems?"],
     "His most famous poems include Quiet Night Thoughts, Bring in the Wine and The Road to Shu Is Hard."),
    ("literature", "en", ["Who is called the Sage of Poetry?"],
     "Du Fu, a Tang dynasty poet and a friend of Li Bai, is called the Sage of Poetry."),
    ("literature", "en", ["Where did Li Bai grow up?"], "Li Bai grew up in Shu, which is today's Sichuan province."),
    ("food", "en", ["What is mung bean cake?", "What is 绿豆糕?"],
     "Mung bean cake is a traditional Chinese pastry made from mung beans, sugar and oil. It is soft and sweet, and "
     "people like to eat it in summer and at the Dragon Boat Festival."),
    ("food", "en", ["How do I make egg fried rice?"],
     "Scramble two eggs and set them aside, fry cold cooked rice in oil, add the eggs, salt and scallions, and toss "
     "until every grain is hot."),
    ("food", "en", ["What is mung bean soup?"],
     "Mung bean soup is a simple Chinese summer drink made by simmering mung beans in water and sweetening them with "
     "rock sugar."),
    ("food", "en", ["How do I make pancakes?"],
     "Mix flour, an egg, milk, sugar and a pinch of salt, then cook ladles of batter in a hot pan and flip them when "
     "bubbles appear."),
    ("travel", "en", ["What is Hangzhou famous for?"],
     "Hangzhou is famous for West Lake, which is beautiful in every season, and for Longjing tea."),
    ("travel", "en", ["What can I do in Chengdu?"],
     "In Chengdu you can visit the giant pandas, relax in a tea house and try hotpot and dan dan noodles."),
    ("travel", "en", ["Any tips for booking a hotel?"],
     "Book early during holidays, read other guests' reviews about cleanliness and noise, and choose a place near "
     "public transport."),
    ("identity", "en", ["What is your name?", "Who are you?"], "My name is mini_qwen. I am a small language model "
     "trained from scratch."),
    ("identity", "en", ["How were you trained?"],
     "I was trained in three stages: pretraining on Chinese and English text, supervised fine-tuning on "
     "conversations, and DPO to prefer clear answers."),
    ("identity", "en", ["What can you do?"], "I can answer simple questions, for example about Li Bai or mung bean "
     "cake, and I can tell short stories. My knowledge is limited, so I can make mistakes."),
    ("story", "en", ["Tell me a short story.", "Can you tell me a bedtime story?"], None),
    ("programming", "en", ["What is Python?"], "Python is a popular programming language that is easy to read and easy "
     "to learn."),
    ("programming", "en", ["How do I add an item to a list in Python?"],
     "Use append: colors.append(\"yellow\") adds \"yellow\" to the end of the list."),
    ("programming", "en", ["Write a Python function that squares a number."],
     "def square(x):\n    return x * x\n\nsquare(4) returns 16."),
    ("ml", "en", ["What is a language model?"], "A language model predicts the next token from the tokens before it. "
     "Most modern ones are built on the Transformer."),
    ("ml", "en", ["What is DPO?"], "DPO, direct preference optimization, trains a model on pairs of a good and a bad "
     "answer to the same prompt so that it prefers the good one. It needs no separate reward model."),
    ("ml", "en", ["Why do small models repeat themselves?"],
     "Often because they have not learned when to stop. Fine-tuning on clean answers and preference training "
     "against repetition help."),
    ("math", "en", ["What is 7 times 8?"], "7 times 8 is 56."),
    ("math", "en", ["How many days are there in a week?"], "There are 7 days in a week."),
    ("translation", "en", ["Translate \"床前明月光\" into English."], "Moonlight shines before my bed."),
    ("translation", "en", ["How do you say \"thank you\" in Chinese?"], "\"Thank you\" in Chinese is 谢谢 (xièxie)."),
    ("literature", "en", ["Who wrote Spring Dawn?"],
     "Spring Dawn was written by Meng Haoran, a poet of the Tang dynasty."),
    ("literature", "en", ["Recite Quiet Night Thoughts in English."],
     "Moonlight before my bed, like frost upon the ground. I raise my head to the bright moon, then lower it and "
     "think of home."),
    ("literature", "en", ["What is the Mid-Autumn Festival?"],
     "It is a Chinese festival on the fifteenth day of the eighth lunar month, when families admire the full moon "
     "and share mooncakes."),
    ("food", "en", ["What do people eat at the Dragon Boat Festival?"],
     "They eat zongzi, and in many places also mung bean cakes."),
    ("food", "en", ["How do I make smashed cucumber salad?"],
     "Smash and cut the cucumbers, salt them for ten minutes and drain, then toss with garlic, vinegar, soy sauce, "
     "a pinch of sugar and sesame oil."),
    ("travel", "en", ["Why is Kunming called the City of Eternal Spring?"],
     "Because its weather is mild all year round, never very hot and never very cold."),
    ("programming", "en", ["What does git commit do?"],
     "git commit saves the staged changes as a new commit in the history, for example git commit -m \"fix typo\"."),
    ("programming", "en", ["How do I list files in Linux?"], "Use ls to list the files, and pwd to print the current "
     "directory."),
    ("programming", "en", ["How do I get a value from a dictionary in Python?"],
     "Use its key, like ages[\"Tom\"], or ages.get(\"Tom\", 0) to get a default when the key is missing."),
    ("ml", "en", ["What is a tokenizer?"], "A tokenizer splits text into tokens and maps them to integer ids so that a "
     "model can process them."),
    ("ml", "en", ["What is overfitting?"], "Overfitting is when a model memorizes its training data: the training "
     "loss keeps falling while the validation loss rises."),
    ("identity", "en", ["Are you human?"], "No, I am mini_qwen, a small language model trained from scratch."),
]

# A few long answers (over 128 tokens) so that truncation at the demo's max length is exercised.
LONG_QA = [
    ("food", "zh", "详细说说怎么做绿豆糕",
     "绿豆糕的做法并不难，需要的材料是去皮绿豆、白糖和油，喜欢的话还可以加一点桂花。\n"
     "1. 把去皮绿豆洗净，用清水浸泡四五个小时，泡到用手能捏碎。\n"
     "2. 沥干水分，上锅蒸四十分钟左右，蒸到绿豆完全软烂。\n"
     "3. 趁热把绿豆压成泥，想要口感更细腻，可以过一遍筛。\n"
     "4. 把绿豆泥倒进不粘锅，加入白糖和油，用小火不停翻炒，直到豆沙不粘锅、能抱成团。\n"
     "5. 放凉后分成小份，放进模具里压出花纹。\n"
     "6. 做好的绿豆糕放进冰箱冷藏，吃的时候配一杯清茶，清凉又解暑。\n"
     "绿豆糕含糖较多，一次不要吃太多。"),
    ("literature", "zh", "详细介绍一下李白的生平",
     "李白（701年—762年），字太白，号青莲居士，是唐代伟大的浪漫主义诗人。他少年时生活在蜀地，也就是今天的四川一带，"
     "二十多岁离开家乡，开始漫游天下。他喜欢饮酒、交友，游历了许多名山大川，写下了《望庐山瀑布》《早发白帝城》等名篇。"
     "唐玄宗时，李白曾被召到长安，供奉翰林，但他不愿受拘束，不久便离开朝廷。他和杜甫是好朋友，两人并称“李杜”。"
     "李白晚年生活困顿，762年在当涂去世。他现存诗文九百多篇，被后人誉为“诗仙”。"),
    ("ml", "zh", "详细介绍一下mini_qwen的训练流程",
     "mini_qwen的训练分为三个阶段。\n"
     "第一阶段是预训练（PT）：模型阅读大量中英文文本，把文本切成词元后拼接成固定长度的序列，学习根据上文预测下一个词元。"
     "这一步让模型掌握语言规律和一些基本知识，比如李白是谁、绿豆糕是什么。\n"
     "第二阶段是监督微调（SFT）：用“用户—助手”格式的问答数据继续训练，只在助手回答的部分计算损失，让模型学会对话。\n"
     "第三阶段是直接偏好优化（DPO）：对同一个问题准备一个好回答和一个差回答，例如一个简洁正确、一个不停重复，"
     "让模型学会更倾向于好的回答，从而减轻复读机现象。"),
    ("story", "en", "Tell me a long story about a fox.",
     "Once upon a time, at the foot of a tall mountain, there lived a little fox. The fox was a little shy but very "
     "curious, and every morning it explored a new corner of the forest. One autumn the river rose after days of "
     "rain and washed away the wooden bridge that all the animals used to reach the berry bushes on the other side. "
     "The rabbits were worried, the birds were worried, and even the old bear did not know what to do. The fox "
     "thought for a long time. Then it asked the beavers to cut branches, the birds to carry vines, and the bear to "
     "push the biggest log into place. They worked together for three days. When the new bridge was finished, every "
     "animal crossed it and ate berries until the sun went down. From that day on, nobody called the fox shy again. "
     "The lesson: together we can do what no one can do alone."),
    ("programming", "en", "Explain Python lists with an example.",
     "A Python list holds several values in order, and you can change it after creating it.\n\n"
     "colors = [\"red\", \"green\", \"blue\"]\n"
     "colors.append(\"yellow\")   # add to the end\n"
     "print(colors[0])          # red, because indexes start at zero\n"
     "print(len(colors))        # 4\n"
     "for color in colors:\n"
     "    print(color)\n\n"
     "Lists can hold any type of value, even other lists. Use sorted(colors) to get a sorted copy, or "
     "colors.sort() to sort the list in place. To remove an item, use colors.remove(\"green\") or del colors[1]."),
]

# Multi-turn conversations (4-8 messages), (category, lang, [(human, gpt), ...]).
MULTI = [
    ("literature", "zh", [("李白是谁？", ANS_LIBAI[0]), ("他和杜甫是什么关系？", "李白和杜甫是好朋友，两人并称“李杜”。杜甫被称为“诗圣”。")]),
    ("literature", "zh", [("背一下《静夜思》", "床前明月光，疑是地上霜。举头望明月，低头思故乡。"),
                          ("这首诗是谁写的？", "这首诗是唐代诗人李白写的。"),
                          ("它表达了什么感情？", "这首诗借明月表达了诗人对故乡的思念。")]),
    ("food", "zh", [("绿豆糕", ANS_GREEN[0]), ("怎么保存？", "绿豆糕最好放在冰箱里冷藏保存，尽快吃完。"),
                    ("可以多吃吗？", "绿豆糕含糖较多，好吃但不宜一次吃太多。")]),
    ("food", "zh", [("端午节吃什么？", "端午节人们吃粽子，不少地方还会吃绿豆糕。"),
                    ("粽子怎么煮？", "把包好的粽子放进锅里，加水没过粽子，大火烧开后转小火煮两个小时。")]),
    ("identity", "zh", [("你好", "你好！我是mini_qwen，有什么可以帮你的吗？"), ("你是谁？", "我是mini_qwen，一个从零开始训练的小型语言模型。"),
                        ("你能做什么？", "我可以回答简单的问题，也可以讲小故事。"), ("谢谢", "不客气！")]),
    ("travel", "zh", [("去杭州住哪里方便？", "住在西湖附近最方便，步行就能到断桥和苏堤。"),
                      ("杭州有什么好吃的？", "可以尝尝西湖醋鱼、龙井虾仁和东坡肉。")]),
    ("programming", "zh", [("什么是Python？", "Python是一门简单易学的编程语言。"),
                           ("怎么定义函数？", "用def关键字，例如：\ndef add(a, b):\n    return a + b"),
                           ("怎么调用它？", "写add(2, 3)就会得到5。")]),
    ("ml", "zh", [("什么是预训练？", "预训练是在大量文本上训练模型预测下一个词，让它学会语言规律和知识。"),
                  ("那微调呢？", "监督微调用问答数据教模型按照对话格式回答问题。"),
                  ("DPO呢？", "DPO让模型比较好回答和差回答，学会更倾向于好的回答。")]),
    ("identity", "en", [("who are you?", ANS_WHO[0]), ("what can you do?", "I can answer simple questions and tell "
                        "short stories."), ("tell me a story", ANS_STORY[0])]),
    ("literature", "en", [("Who was Li Bai?", "Li Bai was a famous poet of the Tang dynasty, called the Immortal of "
                           "Poetry."), ("Who was his friend?", "Du Fu, the Sage of Poetry, was his friend.")]),
    ("food", "en", [("What is mung bean cake?", "It is a traditional Chinese pastry made from mung beans, sugar and "
                     "oil."), ("When do people eat it?", "In hot summer weather and at the Dragon Boat Festival."),
                    ("Is it sweet?", "Yes, it is gently sweet with a soft bean flavor.")]),
    ("travel", "en", [("I am going to Xi'an. What should I see?", "Do not miss the Terracotta Army and the city wall."),
                      ("What should I eat there?", "Try roujiamo and lamb soup with bread.")]),
    ("programming", "en", [("How do I read a file in Python?", "Use a with block: with open(\"notes.txt\", "
                            "encoding=\"utf-8\") as f: text = f.read()"),
                           ("Why use with?", "It closes the file automatically, even if an error happens.")]),
    ("story", "en", [("tell me a story", ANS_STORY[1]), ("another one, please", ANS_STORY[2]),
                     ("thank you!", "You are welcome. Sleep well!")]),
    ("math", "en", [("What is 2 plus 3?", "2 plus 3 is 5."), ("And times 4?", "5 times 4 is 20."),
                    ("Minus 6?", "20 minus 6 is 14."), ("Thanks.", "You are welcome.")]),
    ("identity", "en", [("hi", "Hello! I am mini_qwen. How can I help you?"), ("who are you?", ANS_WHO[1])]),
    ("literature", "zh", [("“诗仙”是谁？", "“诗仙”是唐代诗人李白。"), ("“诗圣”呢？", "“诗圣”是唐代诗人杜甫。")]),
    ("food", "zh", [("中秋节吃什么？", "中秋节人们吃月饼、赏月。"), ("月饼有哪些馅？", "常见的有莲蓉、豆沙和五仁。")]),
    ("travel", "en", [("What is Guilin known for?", "Its green peaks and the Li River."),
                      ("How can I see the river?", "Take a bamboo raft trip on the Li River.")]),
    ("identity", "zh", [("你叫什么名字？", "我叫mini_qwen。"), ("你是怎么来的？", "我是从零开始训练出来的：先预训练，再监督微调，最后用DPO优化。")]),
]
SYSTEM_ZH = "你是mini_qwen，一个乐于助人的助手。"
SYSTEM_EN = "You are mini_qwen, a helpful assistant."


def _story_answer(lang, rng):
    """Chinese story prompts get a fresh generated story; English ones one of the seed-prompt stories."""
    return zh_story(rng) if lang == "zh" else rng.choice(ANS_STORY)


def build_sft_conversations(seed):
    """A list of (category, lang, [(from, value), ...]) in a fixed order."""
    rng = random.Random(f"{seed}-sft")
    convs = []

    def single(cat, lang, prompt, answer, system=None):
        msgs = [("system", system)] if system else []
        convs.append((cat, lang, msgs + [("human", prompt), ("gpt", answer)]))

    for i in range(6):  # the seed prompts, several times each, with consistent answers
        single("literature", "zh", "李白是谁？", ANS_LIBAI[i % 2])
        single("food", "zh", "绿豆糕", ANS_GREEN[i % 2])
        single("identity", "en", "who are you?", ANS_WHO[i % 2])
        single("story", "en", "tell me a story", ANS_STORY[i % 3])
    for cat, lang, prompts, answer in QA:
        for p in prompts:
            single(cat, lang, p, answer if answer is not None else _story_answer(lang, rng))
    for cat, lang, prompts, answer in QA[::10]:  # a second copy of a few items, this time with a system turn
        sys_msg = SYSTEM_ZH if lang == "zh" else SYSTEM_EN
        single(cat, lang, prompts[0], answer if answer is not None else _story_answer(lang, rng), sys_msg)
    for cat, lang, prompt, answer in LONG_QA:
        single(cat, lang, prompt, answer)
    for k, (cat, lang, turns) in enumerate(MULTI):
        msgs = [("system", SYSTEM_ZH if lang == "zh" else SYSTEM_EN)] if k % 5 == 0 else []
        for h, g in turns:
            msgs += [("human", h), ("gpt", g)]
        convs.append((cat, lang, msgs))
    rng.shuffle(convs)
    return convs


def _label(cat):
    a_en, a_zh, c_en, c_zh = LABELS[cat]
    return {"ability_en": a_en, "ability_zh": a_zh, "cate_ability_en": c_en, "cate_ability_zh": c_zh}


def _on_seed_prompt(msgs) -> bool:
    return any(p in value for _, value in msgs for p in SEED_PROMPTS)


def sft_tables(seed):
    convs = build_sft_conversations(seed)
    rng = random.Random(f"{seed}-sft-rows")
    seed_rows, other_rows, rows_gen = [], [], []  # 7M file 0, 7M file 1, Gen
    for cat, lang, msgs in convs:
        row = {
            "conversations": [{"from": f, "value": v} for f, v in msgs],
            "label": _label(cat),
            "langdetect": "zh-cn" if lang == "zh" else "en",
            "reward": round(rng.uniform(-5.0, 30.0) * 32) / 32,  # the real rewards are multiples of 1/32
        }
        # About a third goes to Gen, as in the real mix (7M is the larger set); conversations on the
        # seed prompts all go to the first 7M file, which the CPU demo trains on (see demo/sft.yaml).
        on_seed = _on_seed_prompt(msgs)
        if rng.random() < 0.33 and not on_seed:
            row["source"] = "Subjective"
            rows_gen.append(row)
        else:
            row["source"] = SOURCES[cat]
            (seed_rows if on_seed else other_rows).append(row)
    for i, row in enumerate(rows_gen):
        key = f"{seed}-gen-{i}-" + "".join(m["value"] for m in row["conversations"])
        row["id"] = hashlib.md5(key.encode("utf-8")).hexdigest()
    for i, row in enumerate(seed_rows + other_rows):
        row["id"] = i
    return {
        "sft/7M/train-00000-of-00002.parquet": pa.Table.from_pylist(seed_rows, schema=SFT_7M_SCHEMA),
        "sft/7M/train-00001-of-00002.parquet": pa.Table.from_pylist(other_rows, schema=SFT_7M_SCHEMA),
        "sft/Gen/train-00000-of-00001.parquet": pa.Table.from_pylist(rows_gen, schema=SFT_GEN_SCHEMA),
    }


# =============================================================================================
# DPO content
# =============================================================================================
# Hand-written wrong answers: fluent, confident, and false.
WRONG = {
    "李白是谁？": ["李白是宋代的一位画家，以画山水和花鸟闻名，代表作是《清明上河图》。",
                 "李白是明代的一位将军，曾经带兵打仗，后来写了一本兵书。"],
    "绿豆糕": ["绿豆糕是一种用糯米和猪肉做成的咸味点心，通常在冬至的时候吃。",
              "绿豆糕是一种西式蛋糕，用奶油和巧克力做成，一般在圣诞节吃。"],
    "who are you?": ["I am a human teacher from London, and I have been teaching English for twenty years.",
                     "I am ChatBot 3000, the largest language model in the world, and I know everything."],
    "tell me a story": ["A story is a piece of writing. Stories have a beginning, a middle and an end. There are "
                        "many kinds of stories."],
    "《静夜思》是谁写的？": ["《静夜思》是杜甫写的，描写了战乱中的长安。"],
    "“诗仙”指的是谁？": ["“诗仙”指的是宋代诗人苏轼。"],
    "李白是哪个朝代的人？": ["李白是清朝人，生活在康熙年间。"],
    "绿豆糕是用什么做的？": ["绿豆糕是用面粉、黄油和牛奶做成的。"],
    "端午节吃什么？": ["端午节人们吃月饼、赏月，象征家人团圆。"],
    "你是谁？": ["我是一名来自北京的大学生，今年二十岁。"],
    "3加5等于几？": ["3加5等于9。"],
    "Who was Li Bai?": ["Li Bai was a Japanese painter of the nineteenth century, famous for pictures of Mount Fuji."],
    "What is mung bean cake?": ["Mung bean cake is a salty meat pie from France, usually eaten at Christmas."],
    "What is your name?": ["My name is Alice and I live in New York."],
    "What is 7 times 8?": ["7 times 8 is 54."],
    "What is Python?": ["Python is a kind of snake that lives only in Antarctica."],
}
OFF_TOPIC = {
    "zh": ["今天天气不错，适合出去散步。", "我最喜欢的颜色是蓝色，因为它让人想起大海。", "请问你吃饭了吗？我正在看电视。"],
    "en": ["The weather is nice today, so let's go for a walk.", "My favorite color is blue because it reminds me of "
           "the sea.", "I like trains. Trains are fast and they run on rails."],
}


def repetitive(answer, lang, rng):
    """A "复读机" answer: the opening phrase over and over, never finished."""
    if lang == "zh":
        first = re.split(r"[，。！？：\n]", answer)[0] or answer[:8]
        phrase = first[:12]
        return "，".join([phrase] * rng.randint(8, 12)) + "，" + phrase[: max(1, len(phrase) // 2)]
    words = re.split(r"[,.!?:\n]", answer)[0].split()[:7]
    phrase = " ".join(words)
    return ", ".join([phrase] * rng.randint(6, 9)) + ", " + " ".join(words[: max(1, len(words) // 2)])


def truncated(answer, lang):
    """An answer cut off in the middle: no proper ending."""
    cut = max(4, int(len(answer) * 0.45))
    text = answer[:cut].rstrip("，。,. ")
    return text if lang == "zh" else text.rsplit(" ", 1)[0]


def build_dpo_pairs(seed):
    """Seed prompts get one pair per kind of failure; every other question gets one pair."""
    rng = random.Random(f"{seed}-dpo")
    items = []
    for prompt, cat, lang, answers in (("李白是谁？", "literature", "zh", ANS_LIBAI),
                                       ("绿豆糕", "food", "zh", ANS_GREEN),
                                       ("who are you?", "identity", "en", ANS_WHO),
                                       ("tell me a story", "story", "en", ANS_STORY[:2])):
        for answer in answers:
            for kind in ("repeat", "wrong", "off_topic"):
                items.append((cat, lang, prompt, answer, kind))
    for cat, lang, prompts, answer in QA:
        if answer is None:
            continue
        if prompts[0] in WRONG:
            kind = "wrong"
        else:
            kind = rng.choices(["repeat", "off_topic", "truncated"], weights=[6, 2, 2])[0]
        items.append((cat, lang, prompts[0], answer, kind))
    pairs = []
    for cat, lang, prompt, answer, kind in items:
        if kind == "repeat":
            bad = repetitive(answer, lang, rng)
        elif kind == "wrong":
            bad = rng.choice(WRONG[prompt])
        elif kind == "truncated":
            bad = truncated(answer, lang)
        else:
            bad = rng.choice(OFF_TOPIC[lang])
        pairs.append({
            "task_category": DPO_CATEGORY[cat],
            "prompt": prompt,
            "chosen": [{"content": prompt, "role": "user"}, {"content": answer, "role": "assistant"}],
            "rejected": [{"content": prompt, "role": "user"}, {"content": bad, "role": "assistant"}],
        })
    rng.shuffle(pairs)
    return pairs


def dpo_tables(seed):
    pairs = build_dpo_pairs(seed)
    n_test = max(1, len(pairs) // 6)
    train, test = pairs[n_test:], pairs[:n_test]
    for i, row in enumerate(train + test):  # ids are unique across both splits, as in the real data
        row["id"] = i
    return {
        "dpo/train-00000-of-00001.parquet": pa.Table.from_pylist(train, schema=DPO_SCHEMA),
        "dpo/test-00000-of-00001.parquet": pa.Table.from_pylist(test, schema=DPO_SCHEMA),
    }


# =============================================================================================
# Writing and the summary
# =============================================================================================
def build_all(seed=SEED):
    """{relative path: pyarrow.Table} for every file of mini_data/."""
    tables = {}
    tables.update(pt_tables(seed))
    tables.update(sft_tables(seed))
    tables.update(dpo_tables(seed))
    return tables


def write_all(out, seed=SEED):
    out = Path(out)
    tables = build_all(seed)
    for rel, table in tables.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
    return tables


def _token_counter(tokenizer_path):
    """A function text -> token count, and its name; a character-based estimate without a tokenizer."""
    tok = None
    try:
        if tokenizer_path:
            from transformers import AutoTokenizer
            tok = AutoTokenizer.from_pretrained(tokenizer_path)
        elif (ROOT / "models" / "tokenizer").exists():
            from mini_qwen.tokenizer import load_tokenizer
            try:
                tok = load_tokenizer(str(ROOT / "models" / "tokenizer"))
            except TypeError:
                tok = load_tokenizer()
    except Exception as err:  # the summary is informative only: fall back, never fail the write
        print(f"(no tokenizer for the summary: {err}; estimating from characters)")
        tok = None
    if tok is not None:
        return (lambda text: len(tok(text, add_special_tokens=False)["input_ids"])), "tokens"
    # Qwen2.5's tokenizer gives about 0.7 tokens per Chinese character and 1.15 per English word.
    cjk = re.compile(r"[\u4e00-\u9fff]")
    return (lambda text: round(0.7 * len(cjk.findall(text)) + 1.15 * len(re.findall(r"[A-Za-z0-9_]+", text))
                               + 0.5 * len(re.findall(r"[^\w\s]", text)))), "~tokens (estimated from characters)"


def _row_lengths(rel, table, count):
    """Per row: (tokens of all its texts, tokens of the longest sequence training builds from it)."""
    cols = table.to_pydict()
    if rel.startswith("pt/"):
        return [(count(t),) * 2 for t in cols["text"]]
    if rel.startswith("sft/"):
        out = []
        for conv in cols["conversations"]:
            n = sum(count(m["value"]) for m in conv)
            out.append((n, n))
        return out
    out = []
    for p, c, r in zip(cols["prompt"], cols["chosen"], cols["rejected"]):
        np_, nc, nr = count(p), count(c[1]["content"]), count(r[1]["content"])
        out.append((np_ + nc + nr, np_ + max(nc, nr)))
    return out


def summarize(tables, count, unit):
    word = unit.split()[0]
    totals = {}
    print(f"{'file':64s} {'rows':>5s} {word:>8s} {'>100':>5s} {'>128':>5s}")
    for rel, table in tables.items():
        lengths = _row_lengths(rel, table, count)
        split = rel.split("/")[0]
        rows, toks = totals.get(split, (0, 0))
        total = sum(t for t, _ in lengths)
        totals[split] = (rows + table.num_rows, toks + total)
        print(f"{rel:64s} {table.num_rows:5d} {total:8d} {sum(m > 100 for _, m in lengths):5d} "
              f"{sum(m > 128 for _, m in lengths):5d}")
    for split, (rows, toks) in totals.items():
        print(f"{split:>4s} total: {rows} rows, {toks} {unit}")
    print(f">100 / >128: rows whose longest training sequence (PT: the document; SFT: all turns; DPO: the prompt "
          f"plus the longer answer) exceeds that many {word}, before any chat template")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "mini_data"), help="output folder (default: mini_data/)")
    parser.add_argument("--seed", type=int, default=SEED, help="random seed; the committed files use the default")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer folder for the summary's token counts (default: models/tokenizer when it "
                             "exists, else an estimate from characters)")
    parser.add_argument("--quiet", action="store_true", help="write the files, print no summary")
    args = parser.parse_args(argv)
    tables = write_all(args.out, args.seed)
    print(f"wrote {len(tables)} parquet files under {args.out}")
    if not args.quiet:
        count, unit = _token_counter(args.tokenizer)
        summarize(tables, count, unit)
    return 0


if __name__ == "__main__":
    from mini_qwen.errors import run_main
    sys.exit(run_main(main))
