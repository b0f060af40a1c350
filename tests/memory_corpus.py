"""Labelled recall facts and seeded distractor memories for long-term memory retrieval tests.

Distractors are first-person memories built from templates x slot vocabularies. Templates
never speak about the user's own subjects covered by the labelled facts (their pets, partner,
children, employer, car, health, routines, favourites, ...): they talk about other people or
unrelated possessions and errands, so no distractor answers or contradicts a labelled question.
Any distractor containing a labelled answer as a whole word is also filtered out.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

DATA_FILE = Path(__file__).resolve().parent / "data" / "memory_recall.jsonl"
MAX_DISTRACTORS = 200_000


@dataclass(frozen=True)
class LabelledFact:
    fact: str
    question: str
    answer: str


def labelled_facts() -> list[LabelledFact]:
    with DATA_FILE.open(encoding="utf-8") as fh:
        return [LabelledFact(**json.loads(line)) for line in fh if line.strip()]


def _v(text: str) -> list[str]:
    return text.split("|")


_FEMALE = _v(
    "Anna|Beth|Carmen|Dana|Elena|Fatima|Grace|Hannah|Irene|Jess|Kate|Lucy|Megan|Nadia|Olga|Paula|"
    "Rachel|Sarah|Tessa|Vera|Wendy|Yasmin|Zoe|Alice|Bianca|Clara|Deborah|Emma|Freya|Gemma|Harriet|"
    "Ingrid|Julia|Keira|Lena|Mia|Nina|Orla|Pippa|Ruth|Siobhan|Tara|Vicky|Amy|Bea|Cleo|Daisy|Esther|"
    "Farah|Holly|Isla|Joanne|Kim|Lydia|Mei|Niamh|Rebecca|Shona|Ellie|Naomi"
)
_MALE = _v(
    "Adam|Ben|Callum|David|Ethan|Felix|George|Harry|Ian|James|Kevin|Liam|Matt|Nathan|Owen|Paul|Rob|"
    "Sam|Theo|Victor|Will|Yusuf|Zach|Andrew|Bilal|Chris|Dominic|Ed|Frank|Greg|Hugo|Isaac|Jon|Kofi|"
    "Luke|Mike|Neil|Oscar|Pete|Rory|Simon|Tariq|Umar|Vikram|Wes|Aaron|Ciaran|Dev|Euan|Finn|Hamish|"
    "Ivan|Joel|Kai|Lewis|Nico|Patrick|Ryan|Stefan|Alfie"
)
_SHARED_RELATIONS = _v("neighbour|colleague|friend|cousin|old school friend")
# (text, possessive, subject pronoun); the user's own close family is deliberately absent.
_PEOPLE: list[tuple[str, str, str]] = [
    (f"my {relation} {name}", "her", "she")
    for relation in _SHARED_RELATIONS + _v("aunt|sister-in-law|godmother")
    for name in _FEMALE
] + [
    (f"my {relation} {name}", "his", "he")
    for relation in _SHARED_RELATIONS + _v("uncle|brother-in-law|godfather")
    for name in _MALE
]

_SLOTS: dict[str, list[str]] = {
    "city": _v(
        "Manchester|Glasgow|Bristol|Cardiff|York|Bath|Brighton|Norwich|Leicester|Sheffield|Newcastle|"
        "Belfast|Galway|Dublin|Aberdeen|Inverness|Exeter|Oxford|Cambridge|Nottingham|Liverpool|Plymouth|"
        "Swansea|Durham|Hull|Madrid|Seville|Valencia|Barcelona|Rome|Milan|Naples|Turin|Munich|Hamburg|"
        "Vienna|Prague|Krakow|Budapest|Amsterdam|Rotterdam|Brussels|Ghent|Copenhagen|Stockholm|Oslo|"
        "Helsinki|Zurich|Geneva|Lyon|Marseille|Bordeaux|Toronto|Montreal|Boston|Chicago|Seattle|"
        "Melbourne|Sydney|Auckland|Cape Town|Singapore|Seoul"
    ),
    "country": _v(
        "Portugal|Spain|Italy|Greece|Croatia|Morocco|Iceland|Norway|Vietnam|Thailand|Mexico|Peru|Canada|"
        "Kenya|Egypt|Turkey|Jordan|Sri Lanka|Cuba|Argentina|Slovenia|South Korea|New Zealand|Tanzania|"
        "Colombia|Albania|Montenegro|Finland|Malta|Cyprus|Indonesia|Costa Rica|Namibia|Chile"
    ),
    "breed": _v(
        "beagle|spaniel|dachshund|labrador|greyhound|whippet|corgi|pug|border terrier|husky|poodle|"
        "schnauzer|Staffie|cockapoo|Jack Russell|Dalmatian|boxer|Shih Tzu|golden retriever|French bulldog"
    ),
    "pet_kind": _v("dog|cat|spaniel|terrier|labrador|ginger cat|puppy"),
    "pet_name": _v(
        "Max|Bella|Luna|Biscuit|Pepper|Buddy|Bruno|Poppy|Teddy|Olive|Milo|Nala|Ziggy|Pickle|Mabel|"
        "Juniper|Toffee|Sprout|Waffles|Dexter|Willow|Bramble|Pixie|Rocky|Cooper|Pudding|Nutmeg|Archie"
    ),
    "job": _v(
        "a paramedic|an architect|a primary school teacher|a solicitor|a sound engineer|a pharmacist|"
        "a tour guide|a translator|a software tester|a baker|a firefighter|a lab technician|a journalist|"
        "an accountant|a florist|a chef|a social worker|a bus driver|an electrician|a museum curator|"
        "a vet|a midwife|a carpenter|a landscape gardener|a graphic designer|a radio producer|"
        "a town planner|a dental hygienist"
    ),
    "company": _v(
        "a solar panel company|the council|a vet practice|a big law firm|a start-up making electric bikes|"
        "the local hospital|a video game studio|a wine importer|a garden centre|an architecture firm|"
        "a housing charity|a supermarket head office|the train operator|a marketing agency|a publishing house"
    ),
    "night_work": _v("airport|hospital|bakery|parcel depot|hotel|call centre|power station|printing works"),
    "landmark": _v(
        "the station|the cathedral|the old market|the harbour|the town hall|the museum|the canal basin|"
        "the cinema|the bus station|the castle|the football ground|the bandstand|the botanical gardens"
    ),
    "cuisine": _v(
        "Ethiopian|Lebanese|Korean|Georgian|Peruvian|Vietnamese|Sichuan|Turkish|Greek|Nepalese|Sri Lankan|"
        "Mexican|Persian|Moroccan|Japanese|Malaysian|Keralan|Basque|Polish|Caribbean"
    ),
    "month": _v("January|February|March|April|May|June|July|August|October|November|December"),
    "weekday": _v("Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday"),
    "workday": _v("Monday|Tuesday|Wednesday|Thursday|Friday"),
    "ordinal": _v(
        "1st|2nd|3rd|4th|5th|6th|7th|8th|9th|10th|11th|12th|13th|14th|15th|16th|17th|18th|19th|20th|"
        "21st|22nd|23rd|24th|26th|27th|28th"
    ),
    "clock": _v("8am|8:30|9am|9:15|9:45|10:15|10:30|11am|11:45|12:15|1pm|1:45|2pm|2:30|3pm|4pm|4:15|4:45|5pm|5:30"),
    "when": _v(
        "last week|yesterday|on Saturday|over the weekend|a few days ago|last night|this morning|"
        "the other day|earlier this week|a fortnight ago|last Tuesday|on Friday afternoon|at the weekend|"
        "on Monday|last month|just before Easter|on the bank holiday|after work yesterday|"
        "on my lunch break|a couple of weeks ago"
    ),
    "later": _v(
        "next spring|over the Christmas break|next month|this autumn|after the holidays|"
        "when the weather warms up|in the new year|next weekend"
    ),
    "amount": [str(n) for n in range(10, 160, 5)],
    "topic": _v(
        "octopuses|the Apollo missions|volcanoes|medieval castles|deep-sea fish|the history of tea|"
        "honeybees|Antarctic explorers|ancient Rome|coral reefs|fungi|the Silk Road|the history of jazz|"
        "urban foxes|the printing press|famous bridges|the Vikings|black holes|shipwrecks|"
        "the Industrial Revolution|wolves|the history of chocolate|glaciers|code breakers|the Aztecs|"
        "lighthouses|migrating birds|the Cold War|early aviation|the Moon landings"
    ),
    "instrument": _v(
        "ukulele|saxophone|banjo|harp|piano|violin|drums|bass guitar|accordion|flute|mandolin|clarinet|"
        "double bass|bagpipes"
    ),
    "age": [str(n) for n in range(35, 76)],
    "club": _v(
        "Liverpool|Everton|Tottenham|Chelsea|Newcastle|Aston Villa|Wolves|Brighton|Fulham|West Ham|"
        "Rangers|Hibs|Aberdeen|Sunderland|Norwich|Crystal Palace|Brentford|Bristol City|Real Madrid|"
        "Juventus|Bayern Munich|Ajax|Benfica"
    ),
    "stay": _v("two weeks|ten days|three weeks|a month|a week|a fortnight|six weeks"),
    "old_car": _v(
        "Ford Fiesta|Volvo estate|Land Rover|Vauxhall Corsa|Fiat Panda|Nissan Micra|Renault Clio|VW Polo|"
        "Honda Civic|Mini Cooper|Skoda Octavia|Peugeot 206|Citroen Berlingo|Saab convertible|"
        "Volkswagen camper|Mazda MX-5|Audi A3|BMW estate"
    ),
    "vehicle": _v(
        "an electric car|a campervan|a motorbike|a cargo bike|a second-hand Volvo estate|a vintage Vespa|"
        "a canal boat|a hybrid|a pickup truck|a tandem"
    ),
    "allergen": _v(
        "shellfish|cats|sesame|wasp stings|latex|strawberries|eggs|dust mites|horses|pollen|mustard|"
        "celery|soy|hazelnuts"
    ),
    "course": _v(
        "pottery|life drawing|sign language|first aid|woodworking|bread-making|photography|"
        "creative writing|salsa|watercolour|upholstery|stand-up comedy|jewellery-making|car maintenance"
    ),
    "centre": _v(
        "community centre|local college|library|arts centre|village hall|leisure centre|church hall|"
        "adult education centre"
    ),
    "bake": _v(
        "lemon drizzle cake|banana bread|cinnamon buns|carrot cake|brownies|scones|flapjacks|"
        "Victoria sponge|apple crumble|ginger biscuits|chocolate fudge cake|Bakewell tart|cheesecake|"
        "focaccia|sticky toffee pudding|shortbread|hot cross buns|Welsh cakes|coffee and walnut cake|baklava"
    ),
    "ticket": _v("concert|festival|theatre|comedy show|rugby|gig|musical|opera|ballet"),
    "party": _v(
        "fortieth birthday party|leaving do|retirement party|fiftieth birthday party|Christmas party|"
        "summer barbecue|thirtieth birthday party"
    ),
    "pub": _v(
        "the Red Lion|the Crown|the Fox and Hounds|the Swan|the Black Horse|the Royal Oak|the King's Arms|"
        "the Old Bell|the Ship Inn|the Plough|the Wheatsheaf|the White Hart|the Anchor|the Railway Tavern"
    ),
    "veg": _v(
        "tomatoes|courgettes|cucumbers|peppers|strawberries|runner beans|aubergines|lettuce|potatoes|pumpkins|melons"
    ),
    "remedy": _v(
        "honey and lemon|hot ginger tea|garlic soup|elderberry syrup|vitamin C tablets|"
        "a hot bath with eucalyptus oil|chicken soup|an early night|a hot toddy|spicy noodles"
    ),
    "sport": _v("squash|badminton|table tennis|netball|basketball|volleyball|padel|futsal|water polo|five-a-side"),
    "kid": _v("son|daughter|eldest|youngest|little boy|little girl|stepson|stepdaughter"),
    "skill": _v("swim|ride a bike|read|skateboard|play chess|juggle|ice skate|knit|tie shoelaces|surf|bake bread"),
    "room": _v(
        "kitchen|bathroom|hallway|living room|spare room|utility room|study|dining room|loft|landing|conservatory"
    ),
    "gadget": _v(
        "air fryer|e-bike|robot vacuum|smartwatch|3D printer|drone|pizza oven|standing desk|"
        "electric scooter|bread maker|telescope|espresso machine|hot tub|record player"
    ),
    "bone": _v("wrist|collarbone|ankle|arm|elbow|thumb|little toe|nose"),
    "fall_from": _v("ladder|bike|horse|skateboard|garden wall|trampoline|paddleboard|kitchen stool"),
    "bird": _v(
        "robin|wren|woodpecker|heron|kingfisher|jay|goldfinch|buzzard|red kite|nuthatch|long-tailed tit|"
        "sparrowhawk|little egret|barn owl|bullfinch|pied wagtail|fieldfare|cormorant"
    ),
    "outdoors": _v(
        "in the park|by the canal|in the back garden|on the common|near the reservoir|along the river|"
        "in the churchyard|at the nature reserve|on the bird feeder|in the woods near work|"
        "at the end of our road"
    ),
    "sleep_aid": _v(
        "a meditation app|wild swimming|journalling|a weighted blanket|magnesium spray|reading before bed|"
        "a white noise machine|breathing exercises|cutting out screens after nine|lavender pillow spray|"
        "camomile tea"
    ),
    "cause": _v(
        "food bank|animal shelter|community garden|charity shop|hospice shop|repair café|soup kitchen|"
        "wildlife rescue centre|homeless shelter|local library"
    ),
    "furniture": _v(
        "sofa|dining table|piano|wardrobe|bookcase|armchair|chest of drawers|desk|sideboard|rocking chair|"
        "coffee table|fridge freezer"
    ),
    "attempt": _v("first|second|third|fourth|fifth|sixth"),
    "route": _v(
        "the coast path|Hadrian's Wall|the canal towpath|the South Downs Way|the Pembrokeshire coast|"
        "the Thames Path|the West Highland Way|the Pennine Way|the Cotswold Way|the Camino"
    ),
    "hobby": _v(
        "archery|fencing|ballroom dancing|open-water swimming|rowing|judo|powerlifting|chess|cyclocross|"
        "darts|orienteering|trail running|kayaking|roller derby"
    ),
    "home_item": _v(
        "kettle|toaster|rug for the hallway|desk lamp|set of towels|bathroom mirror|shoe rack|"
        "laundry basket|bread bin|clothes airer|bedside table|duvet|doormat|set of saucepans|coat stand|"
        "blender"
    ),
    "store": _v(
        "IKEA|Argos|John Lewis|Dunelm|a charity shop|the garden centre|Lidl|Aldi|the hardware shop|"
        "a car boot sale|eBay|Habitat|a market stall|Marks & Spencer"
    ),
    "clothing": _v(
        "rain jacket|wool jumper|winter coat|linen shirt|summer dress|suit jacket|fleece|hoodie|swimsuit|"
        "dressing gown|raincoat|cardigan|blazer|puffer jacket"
    ),
    "fit": _v("big|small|tight|long|short|baggy"),
    "veg_dish": _v(
        "lentil dal|shakshuka|aubergine parmigiana|falafel|vegetable lasagne|spinach and ricotta cannelloni|"
        "halloumi skewers|bean chilli|sweet potato curry|gnocchi|mushroom stroganoff|paneer tikka|"
        "vegetable paella|courgette fritters|stuffed peppers|tofu pad thai|bibimbap|spanakopita|"
        "cauliflower cheese|leek and potato soup|butternut squash risotto"
    ),
    "fixture": _v(
        "squeaky door hinge|wobbly shelf|loose cupboard handle|broken blind|flickering light|"
        "squeaky floorboard|faulty light switch|loose skirting board|cracked plug socket|"
        "broken curtain pole|sticking door"
    ),
    "appliance": _v(
        "washing machine|dishwasher|fridge|tumble dryer|oven|extractor fan|microwave|freezer|cooker hood|fridge freezer"
    ),
    "noise": _v("grinding|rattling|clicking|humming|buzzing|whining|thumping|squealing"),
    "paint": _v(
        "pale yellow|duck-egg blue|warm grey|terracotta|navy|soft white|mustard yellow|dusty pink|"
        "forest green|lavender|charcoal|cream|burnt orange|pale lilac"
    ),
    "matter": _v(
        "the car share|the weekend plans|the broken fence|the quiz night|the surprise party|"
        "the holiday dates|borrowing the ladder|the school fundraiser|the book club|the gutter repairs|"
        "the concert tickets|the reunion|the garden wall|splitting the bill from dinner|the camping trip"
    ),
    "gathering": _v(
        "a barbecue|brunch|a curry night|a pizza night|a dinner party|a picnic|a games night|a taco night|"
        "an afternoon tea|a potluck"
    ),
    "guests": _v("four|five|six|eight|nine|ten|a dozen"),
    "small_item": _v(
        "reading glasses|umbrella|scarf|water bottle|gloves|library card|earphones|sunglasses|travel mug|"
        "notebook|phone charger|jumper"
    ),
    "workshop": _v(
        "sourdough|pottery|bike maintenance|watercolour|candle-making|knife skills|flower arranging|"
        "screen printing|beekeeping|basket weaving|bookbinding|wreath-making|cheese-making|foraging"
    ),
    "subscription": _v(
        "meal-kit|wine club|magazine|audiobook|film streaming|sock-of-the-month|music streaming|newspaper|"
        "flower delivery|craft box|vinyl record|comic book"
    ),
    "reason": _v(
        "because I never used it|because the price kept going up|after the free trial ended|"
        "because I'd forgotten I even had it"
    ),
    "purchase": _v(
        "new trainers|a pair of curtains|a birthday present|garden furniture|concert tickets|a winter coat|"
        "a vacuum cleaner|plants for the front garden|a food processor|a camping tent|a paddling pool|"
        "a bookcase|school shoes for the kids"
    ),
    "utility": _v("electricity|gas|water|council tax|broadband|mobile phone"),
    "period": _v("quarter|month|year"),
    "shop": _v(
        "bakery|post office|hardware shop|pharmacy|florist|dry cleaner|launderette|bike shop|bookshop|"
        "greengrocer|deli|cheese shop|barber|charity shop|newsagent"
    ),
    "street": _v(
        "Station Road|Church Lane|Mill Street|Victoria Road|King Street|Queen's Parade|the high street|"
        "Elm Avenue|Park Road|Chapel Lane|Bridge Street|Market Square|Northgate|Westbourne Road|"
        "Cedar Close|Orchard Way|Holloway Road|Albert Street|Castle Hill|Gloucester Road"
    ),
    "plant": _v(
        "spider plant|peace lily|basil|cactus|fern|orchid|aloe vera|rubber plant|mint|rosemary|monstera|"
        "jade plant|snake plant|bonsai|geraniums"
    ),
    "spot": _v(
        "kitchen windowsill|landing|bathroom shelf|balcony|patio|bookcase|desk at work|mantelpiece|back step|porch"
    ),
    "body_part": _v("back|shoulder|neck|wrist|hip|lower back|right elbow|right ankle"),
    "strain": _v(
        "helped a friend move house|spent all day gardening|tried a new spin class|carried the shopping home|"
        "painted the ceiling|did a long hike|slept on a friend's sofa|shovelled snow|went paddleboarding|"
        "moved the wardrobe"
    ),
    "genre": _v("crime|historical|sci-fi|fantasy|romance|horror|spy|comic|mystery|literary"),
    "author": _v(
        "Ruth Hallam|Oskar Lind|Meera Joshi|Callum Reid|Ines Duarte|Patrick Moyle|Hana Sato|Graham Ellery|"
        "Ada Quinlan|Tomasz Nowak|Bridget Kaye|Samuel Okafor|Lise Andersen|Kenji Mori|Fiona Strachan|"
        "Marcus Webb"
    ),
    "find": _v(
        "lovely old teapot|vintage lamp|box of old postcards|brass candlestick|set of enamel mugs|"
        "retro radio|hand-painted bowl|stack of old maps|wooden chess set|leather satchel|gilt mirror|"
        "box of vinyl records"
    ),
    "market": _v(
        "flea market|farmers' market|car boot sale|antiques fair|Christmas market|church jumble sale|vintage fair"
    ),
    "project": _v(
        "garden|move|CV|tax return|shed|bathroom tiling|kitchen cupboards|fence|dissertation|new website|"
        "loft clear-out|car boot stall"
    ),
    "house_number": [str(n) for n in range(2, 90)],
    "extension": _v(
        "a loft conversion|a garden office|a conservatory|a two-storey extension|a new driveway|a garage|"
        "a porch|a summer house"
    ),
    "bus": [str(n) for n in range(1, 100)],
    "destination": _v("the office|town|the station|the hospital|the dentist|the gym|the library"),
    "document": _v(
        "birth certificates|warranty papers|old payslips|car logbook|house deeds|marriage certificate|"
        "tax returns|appliance manuals|old bank statements|pet insurance papers"
    ),
    "storage": _v("study|spare room|loft|hall cupboard|dining room|attic"),
    "container": _v("a filing box|the top drawer|an old biscuit tin|a plastic folder|a locked drawer|a box file"),
    "membership": _v("National Trust|gym|library|swimming pool|cinema|museum|English Heritage|zoo|botanical garden"),
    "parking_spot": _v(
        "the supermarket|the library|the hospital|the station|the cinema|the dentist's|the garden centre|"
        "the leisure centre|the post office|the town hall"
    ),
    "device": _v(
        "headphones|smartwatch|e-reader|tablet|electric toothbrush|wireless earbuds|cordless drill|"
        "bike light|camera|fitness tracker"
    ),
    "battery_life": _v("a day|half a day|a couple of hours|an hour|two days|a morning"),
    "tech_item": _v(
        "a new keyboard|a webcam|a wireless mouse|a USB hub|a smart plug|noise-cancelling headphones|"
        "a mechanical keyboard|a portable speaker|a laptop stand|a graphics tablet|a desk fan|a ring light|"
        "a phone tripod"
    ),
    "keepsake": _v(
        "music box|pocketknife|fountain pen|snow globe|jewellery box|atlas|teddy bear|stamp album|"
        "silver bracelet|model train|set of paints|compass"
    ),
    "relative": _v("aunt|uncle|godmother|godfather|great-aunt|great-uncle"),
    "child_age": _v("four|five|six|eight|nine|ten|eleven|twelve"),
    "outing": _v("a coffee|tea|lunch|breakfast|a quick drink|cake|brunch"),
    "cafe": _v(
        "the Copper Kettle|Bean There|the Old Post Office café|Number Nine|the Daily Grind|Pip's Kitchen|"
        "the Corner House|Little Fox Café|the Tea Rooms|Crema|the Larder|Honeybee Café"
    ),
    "work_event": _v("conference|training day|client visit|trade fair|team offsite|two-day workshop|board meeting"),
    "bike_part": _v("brakes|gears|chain|back wheel|front light|saddle|mudguards|pedals"),
    "occasion": _v("birthday|retirement|housewarming|graduation|new baby|leaving do|anniversary|engagement"),
    "show": _v(
        "a crime drama|old episodes of a quiz show|a nature series|the snooker|a baking competition|"
        "a Danish thriller|the election coverage|a dating show|a property programme|a space documentary"
    ),
    "journey": _v("two-hour|three-hour|four-hour|five-hour|six-hour"),
    "local_event": _v(
        "craft fair|jazz night|comedy night|book launch|open-air cinema screening|folk concert|plant swap|"
        "author talk|wine tasting|ceilidh"
    ),
    "venue": _v("town hall|arts centre|library|community centre|village hall|botanical gardens|museum|old church"),
    "public_place": _v(
        "garden centre|train station|supermarket|dentist's|farmers' market|swimming pool|post office|"
        "library|school gates|hardware shop|bus stop|petrol station"
    ),
    "raffle": _v(
        "office raffle|school raffle|pub quiz|church tombola|charity raffle|Christmas raffle|golf club sweepstake"
    ),
    "garment": _v(
        "favourite white shirt|new jeans|wool jumper|silk scarf|cashmere cardigan|gym leggings|linen trousers"
    ),
    "gift": _v(
        "a scented candle|a cookbook|a jigsaw puzzle|a bottle of wine|a houseplant|a hand-knitted scarf|"
        "a voucher for a spa day|a pair of slippers|a framed print|a bird feeder|a box of chocolates|"
        "a pasta maker|a photo album"
    ),
    "live_event": _v(
        "a comedy show|a rugby match|a jazz gig|a pantomime|an open-air play|a fireworks display|"
        "a food festival|an ice hockey game|a folk festival|the darts final|a classical concert|"
        "a stand-up night"
    ),
    "walk": _v(
        "Victoria Park|the common|the reservoir|the woods|the country park|the old railway line|the heath|"
        "the botanical gardens|the nature reserve"
    ),
    "fundraiser": _v(
        "school fair|charity cake sale|church fete|hospice coffee morning|office bake-off|village fete|"
        "summer fair|nursery open day"
    ),
    "borrowed": _v(
        "ladder|drill|camping stove|tent|pressure washer|hedge trimmer|suitcase|slow cooker|"
        "wallpaper steamer|lawnmower|folding table|sewing machine"
    ),
    "outbuilding": _v("shed|garage|porch|greenhouse|summer house|garden office"),
    "subject": _v("maths|history|geography|French|PE|art|music|English|physics|drama|science|German"),
    "title": _v("Mr|Mrs|Ms|Miss"),
    "surname": _v(
        "Hughes|Patel|Morrison|Clarke|Doyle|Fletcher|Adeyemi|Burns|Kowalski|Whitaker|Singh|Harper|Lowe|"
        "Brennan|Chambers|Murray|Pritchard|Osborne|Fenwick|Garcia"
    ),
    "insurance": _v("home|pet|travel|contents|gadget|buildings"),
}

# {p} is a person from _PEOPLE, {poss}/{subj} their pronouns; other fields name _SLOTS entries.
_TEMPLATES: tuple[str, ...] = (
    "{p} just adopted a {breed} puppy called {pet_name}.",
    "{p} has a {breed} that barks at every delivery driver.",
    "{p}'s cat {pet_name} keeps sneaking into our garden.",
    "{p}'s {pet_kind} {pet_name} has worked out how to open the back door.",
    "I took {p}'s dog for a walk around {walk} {when}.",
    "{p} moved to {city} {when} for a new job.",
    "{p} works as {job} in {city}.",
    "{p} just started a new job at {company}.",
    "{p} works night shifts at the {night_work} and sleeps through most of the day.",
    "{p} recommended a new {cuisine} place near {landmark}.",
    "{p} is running a half marathon in {city} in {month}.",
    "{p} lent me a book about {topic} that I still haven't given back.",
    "{p} has started learning the {instrument} at the age of {age}.",
    "{p} supports {club} and talks about nothing else on Mondays.",
    "{p} just got back from {stay} in {country}.",
    "{p} showed me photos from {poss} trip to {country}.",
    "I got a postcard from {p}, who's backpacking around {country}.",
    "{p} drives an old {old_car} that keeps breaking down.",
    "{p} is thinking about buying {vehicle}.",
    "{p} is allergic to {allergen}, so we always check the menu.",
    "{p} has signed up for {course} classes at the {centre}.",
    "{p} bakes the best {bake} I've ever tasted.",
    "{p} says {cafe} does the best {bake} in town.",
    "{p} still owes me £{amount} for the {ticket} tickets.",
    "{p} is having a {party} at {pub} on {weekday}.",
    "{p} grows {veg} in a greenhouse behind {poss} house.",
    "{p} swears by {remedy} whenever {subj} has a cold.",
    "{p} plays {sport} every {weekday} evening with a group from work.",
    "{p}'s {kid} has just started learning to {skill}.",
    "{p} is renovating {poss} {room} and living on takeaways.",
    "{p} can't stop talking about {poss} new {gadget}.",
    "{p} broke {poss} {bone} falling off a {fall_from}.",
    "{p} spotted a {bird} {outdoors} and sent me a blurry photo.",
    "{p} recommended I try {sleep_aid} to help me sleep better.",
    "{p} has been volunteering at the {cause} on {weekday}s.",
    "{p} is selling {poss} old {furniture} if anyone wants it.",
    "{p} passed {poss} driving test on the {attempt} attempt.",
    "{p} and I are planning to walk {route} in {month}.",
    "{p} recently took up {hobby} and has already entered a competition.",
    "{p} keeps telling me to listen to a podcast about {topic}.",
    "I bought a new {home_item} from {store} {when}.",
    "I need to return the {clothing} I ordered {when} because it's far too {fit}.",
    "I tried making {veg_dish} for the first time {when}.",
    "I had {veg_dish} at {cafe} {when} and it was delicious.",
    "I finally fixed the {fixture} in the {room} {when}.",
    "The {appliance} started making a strange {noise} noise {when}.",
    "I booked someone to look at the {appliance} on {workday} morning.",
    "I'm thinking of painting the {room} {paint} {later}.",
    "I have a dentist appointment on {workday} the {ordinal} at {clock}.",
    "I saw a {bird} {outdoors} {when}.",
    "I watched a documentary about {topic} {when} and couldn't stop thinking about it.",
    "I've been meaning to call {p} about {matter}.",
    "I still need to reply to {p}'s email about {matter}.",
    "I'm hosting {gathering} for {guests} friends on {weekday}.",
    "I think I left my {small_item} at {p}'s house {when}.",
    "I signed up for a {workshop} workshop at the {centre} in {month}.",
    "I cancelled my {subscription} subscription {reason}.",
    "I spent £{amount} on {purchase} at {store} {when}.",
    "Our {utility} bill went up by £{amount} this {period}.",
    "I won £{amount} in the {raffle} {when}.",
    "I got a £{amount} parking ticket outside {parking_spot} {when}.",
    "The {shop} on {street} closes early on {weekday}s.",
    "I keep forgetting to water the {plant} on the {spot}.",
    "My {body_part} has been aching since I {strain} {when}.",
    "I'm halfway through a {genre} novel by {author} that {p} lent me.",
    "I found a {find} at the {market} on {weekday}.",
    "I promised {p} I'd help with {poss} {project} on {weekday}.",
    "Our neighbours at number {house_number} have been building {extension} since {month}.",
    "The number {bus} bus was cancelled again {when}, so I had to walk to {destination}.",
    "I keep the {document} in {container} in the {storage}.",
    "I renewed my {membership} membership {when}.",
    "The battery on my {device} barely lasts {battery_life} these days.",
    "I ordered {tech_item} online and it should arrive on {weekday}.",
    "I still have the {keepsake} my {relative} gave me when I was {child_age}.",
    "I met {p} for {outing} at {cafe} {when}.",
    "I've got a {work_event} in {city} at the end of {month}.",
    "I need to get the {bike_part} on my bike sorted {later}.",
    "I need to buy a present for {p}'s {occasion}.",
    "I stayed up far too late {when} watching {show}.",
    "I have a {journey} train journey to {city} on {weekday} for work.",
    "There's a {local_event} at the {venue} on the {ordinal} that I'd like to go to.",
    "I bumped into {p} at the {public_place} {when}.",
    "I helped {p} carry {poss} new {furniture} up three flights of stairs {when}.",
    "My {garment} got ruined in the wash {when}.",
    "{p} gave me {gift} for my birthday.",
    "I went to {live_event} with {p} {when} and had a brilliant time.",
    "I volunteered to bake {bake} for the {fundraiser} on {weekday}.",
    "I finally returned {p}'s {borrowed} {when}.",
    "The roof of the {outbuilding} started leaking during the storm {when}.",
    "I ran into my old {subject} teacher, {title} {surname}, at the {public_place} {when}.",
    "I need to renew the {insurance} insurance before the {ordinal}.",
)

_FIELD = re.compile(r"{(\w+)}")
_PERSON_FIELDS = {"p", "poss", "subj"}


def _capacity(template: str) -> int:
    fields = set(_FIELD.findall(template))
    people = len(_PEOPLE) if fields & _PERSON_FIELDS else 1
    return people * math.prod(len(_SLOTS[name]) for name in fields - _PERSON_FIELDS)


def _fill(template: str, rng: random.Random) -> str:
    person, poss, subj = rng.choice(_PEOPLE)
    values = {name: rng.choice(_SLOTS[name]) for name in _FIELD.findall(template) if name in _SLOTS}
    text = template.format(p=person, poss=poss, subj=subj, **values)
    return text[0].upper() + text[1:]


def distractors(count: int, seed: int = 0) -> list[str]:
    """Return `count` unique distractor memories, deterministic for a given seed."""
    if not 0 <= count <= MAX_DISTRACTORS:
        raise ValueError(f"count must be between 0 and {MAX_DISTRACTORS}")
    answers = sorted((re.escape(f.answer.lower()) for f in labelled_facts()), key=len, reverse=True)
    blocked = re.compile(rf"(?<!\w)(?:{'|'.join(answers)})(?!\w)")  # matched against lowercased text
    # Weight templates by how many sentences they can produce (capped) so small ones don't repeat.
    weights = [min(_capacity(t), 20_000) for t in _TEMPLATES]
    rng = random.Random(seed)
    seen: dict[str, None] = {}  # insertion-ordered, unlike a set, so output order is seed-stable
    while len(seen) < count:
        for template in rng.choices(_TEMPLATES, weights, k=count - len(seen)):
            text = _fill(template, rng)
            if text not in seen and not blocked.search(text.lower()):
                seen[text] = None
    return list(seen)
